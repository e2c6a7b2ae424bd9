#!/usr/bin/env bash
# tools/check_layers.sh — the include arrows of docs/architecture.md, checked.
#
# Each folder is one static library and may include only itself and the
# folders below it:
#
#   common <- kernels <- worker/comm, worker/tokenizer, worker/model
#          <- worker/engine <- worker/service, client/cli
#   common <- client (libllmq) <- client/cli, loadtest
#   common <- gateway
#
# A quoted #include of a higher or sibling folder, or a Redis / HTTP / event
# loop header (<hiredis/...>, <ev.h>, <http_parser.h>) in a folder that must
# know nothing of them (kernels and the worker's parts below the service),
# fails.  tests/, tools/ and fuzz targets may include anything.
#
# Usage: tools/check_layers.sh [ROOT]   (default: the repository holding this
# script).  Prints each offending line as FILE:LINE: and exits 1 on any.
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2

# The folder a file belongs to (its library), or nothing for files not checked.
layer_of() {
    case "$1" in
        common/*) echo common ;;
        kernels/*) echo kernels ;;
        worker/comm/*) echo worker/comm ;;
        worker/tokenizer/*) echo worker/tokenizer ;;
        worker/model/*) echo worker/model ;;
        worker/engine/*) echo worker/engine ;;
        worker/service/*) echo worker/service ;;
        worker/*) echo worker ;;   # a file outside the part folders: always wrong
        client/cli/*) echo client/cli ;;
        client/*) echo client ;;
        gateway/*) echo gateway ;;
        loadtest/*) echo loadtest ;;
        *) ;;
    esac
}

# The layers a layer may include (besides itself).
allowed() {
    case "$1" in
        common) echo "" ;;
        kernels) echo "common" ;;
        worker/comm | worker/tokenizer | worker/model) echo "common kernels" ;;
        worker/engine) echo "common kernels worker/comm worker/tokenizer worker/model" ;;
        worker/service) echo "common kernels worker/comm worker/tokenizer worker/model worker/engine" ;;
        client) echo "common" ;;
        client/cli) echo "common kernels worker/comm worker/tokenizer worker/model worker/engine client" ;;
        gateway) echo "common" ;;
        loadtest) echo "common client" ;;
        *) echo "" ;;
    esac
}

# Layers that must not see Redis, HTTP or the event loop.
no_io() {
    case "$1" in
        kernels | worker/comm | worker/tokenizer | worker/model | worker/engine) return 0 ;;
        *) return 1 ;;
    esac
}

bad=0
while IFS= read -r f; do
    from=$(layer_of "$f")
    [ -n "$from" ] || continue
    if [ "$from" = worker ]; then
        echo "$f: a worker source outside worker/{comm,tokenizer,model,engine,service}/"
        bad=1
        continue
    fi
    ok=" $from $(allowed "$from") "
    while IFS=: read -r line inc; do
        case "$inc" in
            \"*\")
                p=${inc#\"}; p=${p%\"}
                to=$(layer_of "$p")
                if [ -z "$to" ] || [[ "$ok" != *" $to "* ]]; then
                    echo "$f:$line: $from may not include \"$p\" (allowed: $from $(allowed "$from"))"
                    bad=1
                fi
                ;;
            \<*\>)
                p=${inc#<}; p=${p%>}
                case "$p" in
                    hiredis/* | ev.h | http_parser.h)
                        if no_io "$from"; then
                            echo "$f:$line: $from must know nothing of Redis, HTTP or the event loop (<$p>)"
                            bad=1
                        fi
                        ;;
                esac
                ;;
        esac
    done < <(grep -nE '^[[:space:]]*#[[:space:]]*include' "$f" |
             sed -E 's/^([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*(["<][^">]*[">]).*/\1:\2/')
done < <(find common kernels worker client gateway loadtest -type f \
              \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null | sort)

if [ "$bad" -ne 0 ]; then
    echo "check_layers: include arrows broken (see docs/architecture.md, 'Folders and arrows')" >&2
    exit 1
fi
exit 0
