#!/usr/bin/env bash
# tests/fuzz/run.sh — run libFuzzer targets built by `make fuzz` (fuzz.mk).
#
#   FUZZ_OUT=build-fuzz/libfuzzer FUZZ_SECONDS=30 bash tests/fuzz/run.sh [name...]
#
# Each target runs for FUZZ_SECONDS on a fresh copy of its committed corpus
# and regressions ($FUZZ_OUT/work/<name>/; the committed corpus never grows by
# itself), with its dictionary when tests/fuzz/dict/<name>.dict exists.  A
# crash, leak, sanitizer report, timeout or out-of-memory stops that target
# and leaves the input in $FUZZ_OUT/artifacts/<name>/; the script goes on with
# the others and exits 1 at the end if any target failed.  One summary line
# per target: runs, execs/s, corpus size reached, and the log file.
set -u
cd "$(dirname "$0")/../.."
OUT=${FUZZ_OUT:-build-fuzz/libfuzzer}
SECS=${FUZZ_SECONDS:-30}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        n=${f#tests/fuzz/fuzz_}; n=${n%.c}
        [ "$n" = util ] || targets+=("$n")
    done
fi

# Per-target options: the longest input worth trying.
opts_for() {
    case $1 in
        http) echo "-max_len=20000" ;;
        gw_request) echo "-max_len=8192" ;;
        tokenizer_load | safetensors) echo "-max_len=65536" ;;
        tokenizer_encode | chat) echo "-max_len=2048" ;;
        *) echo "-max_len=4096" ;;
    esac
}

failed=() total_runs=0
for t in "${targets[@]}"; do
    bin="$OUT/fuzz_$t"
    if [ ! -x "$bin" ]; then echo "fuzz_$t: $bin missing (make fuzz builds it)"; failed+=("$t"); continue; fi
    work="$OUT/work/$t" art="$OUT/artifacts/$t" log="$OUT/logs/$t.log"
    rm -rf "$work"
    mkdir -p "$work" "$art" "$(dirname "$log")"
    for d in "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t"; do
        [ -d "$d" ] && find "$d" -maxdepth 1 -type f -exec cp {} "$work/" \;
    done
    dict=()
    [ -f "tests/fuzz/dict/$t.dict" ] && dict=("-dict=tests/fuzz/dict/$t.dict")
    # shellcheck disable=SC2046
    "$bin" -max_total_time="$SECS" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$art/" $(opts_for "$t") "${dict[@]}" "$work" >"$log" 2>&1
    rc=$?
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    files=$(find "$work" -type f | wc -l)
    total_runs=$((total_runs + ${runs:-0}))
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        printf 'fuzz_%-18s FAILED (exit %d) after %s runs; log %s\n' "$t" "$rc" "${runs:-?}" "$log"
        grep -E 'ERROR:|SUMMARY:|invariant broken|Test unit written|runtime error' "$log" | head -8 | sed 's/^/    /'
    else
        printf 'fuzz_%-18s ok: %s runs in %ss (%s/s), %s, corpus %d files; log %s\n' "$t" "${runs:-0}" "$SECS" \
            "${rate:-0}" "${cov:-cov: ?}" "$files" "$log"
    fi
done
echo "fuzz: ${#targets[@]} targets, $total_runs runs, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
