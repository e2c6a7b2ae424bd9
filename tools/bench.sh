#!/usr/bin/env bash
# make bench: CPU engine throughput for the 110M shape in F32 and BF16, each
# against the memory read bandwidth measured in the same process
# (`llmq bench`).  Random-weight models are generated once into
# $LLMQ_BENCH_DIR (default /tmp/llmq-bench) by tools/gen_model.py.
# LLAMA2C_SRC=DIR (a llama2.c checkout) adds the llama2.c anchor
# (tools/anchor_llama2c.sh) on the same F32 weights.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
mkdir -p "$DIR"
for dt in f32 bf16; do
  [ -f "$DIR/110M-$dt/model.safetensors" ] || "$PYTHON" tools/gen_model.py --shape 110M --dtype "$dt" --out "$DIR/110M-$dt"
done
echo "== llmq bench ($(nproc) cores, $(date -u +%Y-%m-%d),$(uptime | sed 's/.*load/ load/'))"
for dt in f32 bf16; do
  "$BUILD/llmq" bench --model "$DIR/110M-$dt" "$@"
done
if [ -n "${LLAMA2C_SRC:-}" ]; then
  BUILD=$BUILD PYTHON=$PYTHON LLMQ_BENCH_DIR=$DIR tools/anchor_llama2c.sh "$LLAMA2C_SRC" "$DIR/110M-f32"
fi

# Tensor parallel on CPU ranks: the same F32 model at TP 1 and TP 2 (one
# process per rank, shm all-reduce), and TP 2 over loopback TCP (the
# communicator of groups started rank by rank across hosts), greedy, 64 new
# tokens, batch 1 and 8, interleaved so that all see the same machine.
# decode tok/s is what `llmq generate --json` reports per sequence, summed
# over the batch.
echo "== tensor parallel decode, 110M F32 (tok/s summed over the batch; best of 3)"
tp_run() {  # tp batch transport -> summed decode tok/s
  local ids=() i
  for i in $(seq "$2"); do ids+=(--prompt-ids "$i,2,3,4"); done
  LLMQ_TP_TRANSPORT=$3 "$BUILD/llmq" generate --model "$DIR/110M-f32" "${ids[@]}" --max-tokens 64 \
      --temperature 0 --tp "$1" --json 2>/dev/null |
    "$PYTHON" -c 'import sys, json; print(round(sum(json.loads(l)["decode_tok_per_s"] for l in sys.stdin), 1))'
}
for b in 1 8; do
  best1=0 best2=0 best3=0
  for rep in 1 2 3; do
    t1=$(tp_run 1 "$b" shm); t2=$(tp_run 2 "$b" shm); t3=$(tp_run 2 "$b" tcp)
    best1=$("$PYTHON" -c "print(max($best1, $t1))"); best2=$("$PYTHON" -c "print(max($best2, $t2))")
    best3=$("$PYTHON" -c "print(max($best3, $t3))")
  done
  echo "batch $b: tp1 $best1 tok/s  tp2 $best2 tok/s  tp2/tp1 $("$PYTHON" -c "print(f'{$best2 / $best1:.2f}x')")" \
       " tp2-tcp $best3 tok/s  tp2-tcp/tp1 $("$PYTHON" -c "print(f'{$best3 / $best1:.2f}x')")"
done
