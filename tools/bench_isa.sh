#!/usr/bin/env bash
# tools/bench_isa.sh [OLD_LLMQ] — `llmq bench --json` on the 110M F32 and BF16
# models of `make bench` (and INT8 / INT4 quantized at load from the F32 one)
# once per CPU kernel path this processor supports (LLMQ_CPU_ISA), and with
# OLD_LLMQ (an llmq binary of another build, e.g. an earlier commit) when
# given; ROUNDS rounds (default 2), interleaved; prints one line per run:
#   <label> <the JSON line>
# docs/benchmarks.md "Per instruction-set path" is its output, best of the
# rounds.  Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
OLD=${1:-}
for dt in f32 bf16; do
  [ -f "$DIR/110M-$dt/model.safetensors" ] || { echo "no $DIR/110M-$dt: run make bench first" >&2; exit 2; }
done
paths=()
for isa in avx2 avx512 avx512bf16; do
  LLMQ_CPU_ISA=$isa "$BUILD/llmq" generate --model "$DIR/110M-f32" --prompt-ids 1 --max-tokens 1 \
    >/dev/null 2>&1 && paths+=("$isa")
done
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) CPUs, paths: ${paths[*]}; $(uptime)"
run() {  # label, then llmq bench arguments
  local label=$1; shift
  echo "$label $("$@" --json 2>/dev/null | tail -1)"
}
for round in $(seq "${ROUNDS:-2}"); do
  for w in f32 bf16 int8 int4; do
    case $w in
      f32|bf16) args=(--model "$DIR/110M-$w") ;;
      *) args=(--model "$DIR/110M-f32" --quantization "$w") ;;
    esac
    [ -n "$OLD" ] && run "old/$w" "$OLD" bench "${args[@]}"
    for isa in "${paths[@]}"; do
      [ "$isa" = avx512bf16 ] && [ "$w" != bf16 ] && continue  # the same code as avx512 there
      run "$isa/$w" env LLMQ_CPU_ISA="$isa" "$BUILD/llmq" bench "${args[@]}"
    done
  done
done
