#!/usr/bin/env bash
# llmq-fetch-model — download a Hugging Face model repository into a local
# directory for llmq-worker. Runs as the worker pods' init container.
#
#   llmq-fetch-model --repo ORG/NAME [--revision REV] --dest DIR
#
# Environment: HF_TOKEN (optional bearer token, for gated repos), HF_ENDPOINT
# (default https://huggingface.co), LLMQ_FETCH_STALE_S (seconds after which a
# lock whose holder stopped refreshing it is taken over, default 180),
# LLMQ_FETCH_POLL_S (seconds between two looks at another pod's lock, default 5).
#
# Invariants:
#   - DIR is complete or absent: files land in DIR.partial and the directory
#     is renamed to DIR only after every file arrived, with the marker file
#     DIR/.llmq-complete holding "ORG/NAME@REV".
#   - A DIR whose marker names the same repo@revision is used as is: nothing is
#     contacted (pods restart and scale from zero without the network).
#   - Several pods sharing one cache volume download once: the first takes the
#     lock directory DIR.lock (mkdir is atomic, NFS included) and refreshes its
#     mtime while it works; the others wait for the marker.
#   - An interrupted download resumes: finished files stay in DIR.partial,
#     the file in progress continues from its last byte (curl -C -).
#   - Only what llmq-worker reads is fetched: config, generation config,
#     tokenizer files and safetensors weights (no .bin/.pth/.gguf copies).
set -euo pipefail

prog=llmq-fetch-model
repo="" rev="main" dest=""
die() { echo "$prog: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --repo) repo=${2:-}; shift 2 ;;
        --revision) rev=${2:-}; shift 2 ;;
        --dest) dest=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$repo" ] || die "--repo ORG/NAME is required"
[ -n "$dest" ] || die "--dest DIR is required"
[[ "$repo" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad repo id '$repo'"
[ -n "$rev" ] || rev=main
dest=${dest%/}

endpoint=${HF_ENDPOINT:-https://huggingface.co}
endpoint=${endpoint%/}
stale=${LLMQ_FETCH_STALE_S:-180}
poll=${LLMQ_FETCH_POLL_S:-5}
want="$repo@$rev"
marker="$dest/.llmq-complete"
lock="$dest.lock"
partial="$dest.partial"

complete() { [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; }

if complete; then
    echo "$prog: $want already in $dest"
    exit 0
fi

mkdir -p "$(dirname "$dest")"

# ------------------------------------------------------------------ lock
while ! mkdir "$lock" 2>/dev/null; do
    if complete; then
        echo "$prog: $want already in $dest (downloaded by another pod)"
        exit 0
    fi
    now=$(date +%s)
    mtime=$(stat -c %Y "$lock" 2>/dev/null || echo "$now")
    if [ $((now - mtime)) -gt "$stale" ]; then
        echo "$prog: lock $lock not refreshed for $((now - mtime)) s: taking it over" >&2
        rm -rf "$lock"
        continue
    fi
    echo "$prog: another pod is downloading $want; waiting"
    sleep "$poll"
done
# (Its output goes nowhere: an inherited stdout would keep a reader of ours
# waiting for the last sleep after we exit.)
( while sleep 20; do touch "$lock" 2>/dev/null || exit 0; done ) </dev/null >/dev/null 2>&1 &
heartbeat=$!
cleanup() { kill "$heartbeat" 2>/dev/null || true; rm -rf "$lock"; }
trap cleanup EXIT
trap 'exit 143' TERM INT

if complete; then
    echo "$prog: $want already in $dest"
    exit 0
fi

# ------------------------------------------------------------------ listing
auth=()
if [ -n "${HF_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $HF_TOKEN"); fi
curl_get() { # URL OUT [extra curl args...]
    local url=$1 out=$2; shift 2
    curl -fsSL --retry 5 --retry-delay 5 --connect-timeout 20 "${auth[@]}" "$@" -o "$out" "$url"
}

mkdir -p "$partial"
listing="$partial/.listing.json"
if ! curl_get "$endpoint/api/models/$repo/revision/$rev" "$listing"; then
    die "cannot list $want at $endpoint (a gated repo needs HF_TOKEN with access granted)"
fi
mapfile -t files < <(jq -r '.siblings[].rfilename' "$listing" |
    grep -E '^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|model\.safetensors\.index\.json|[^/]+\.safetensors)$' || true)

have() { printf '%s\n' "${files[@]}" | grep -qxE "$1"; }
have 'config\.json' || die "$want has no config.json"
have '[^/]+\.safetensors' || die "$want has no safetensors weights (llmq-worker reads only .safetensors; convert .bin checkpoints first)"
have 'tokenizer\.json' || die "$want has no tokenizer.json"

# ------------------------------------------------------------------ download
for f in "${files[@]}"; do
    if [ -f "$partial/$f" ]; then
        echo "$prog: $f already downloaded"
        continue
    fi
    echo "$prog: fetching $f"
    # .part files resume where an interrupted attempt stopped.
    curl_get "$endpoint/$repo/resolve/$rev/$f" "$partial/$f.part" -C - ||
        die "download of $f failed"
    mv -f "$partial/$f.part" "$partial/$f"
done

# ------------------------------------------------------------------ publish
rm -f "$listing"
printf '%s\n' "$want" >"$partial/.llmq-complete"
if [ -e "$dest" ]; then
    # An older revision (or a broken copy) under the same path: replace it.
    rm -rf "$dest.old"
    mv -T "$dest" "$dest.old"
fi
mv -T "$partial" "$dest"
rm -rf "$dest.old"
echo "$prog: $want ready in $dest (${#files[@]} files)"
