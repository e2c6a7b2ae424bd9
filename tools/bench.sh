#!/usr/bin/env bash
# make bench: CPU engine throughput for the 110M shape in F32 and BF16, each
# against the memory read bandwidth measured in the same process
# (`llmq bench`).  Random-weight models are generated once into
# $LLMQ_BENCH_DIR (default /tmp/llmq-bench) by tools/gen_model.py.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
mkdir -p "$DIR"
for dt in f32 bf16; do
  [ -f "$DIR/110M-$dt/model.safetensors" ] || "$PYTHON" tools/gen_model.py --shape 110M --dtype "$dt" --out "$DIR/110M-$dt"
done
echo "== llmq bench ($(nproc) cores, $(date -u +%Y-%m-%d))"
for dt in f32 bf16; do
  "$BUILD/llmq" bench --model "$DIR/110M-$dt" "$@"
done
