#!/usr/bin/env bash
# tools/anchor_llama2c.sh LLAMA2C_SRC_DIR [MODEL_DIR] — llmq's single-stream
# decode against llama2.c's run.c (the simplest C implementation there is)
# on the same random weights, side by side (docs/benchmarks.md "CPU engine").
#
# run.c comes from LLAMA2C_SRC_DIR (a checkout of karpathy/llama2.c; never
# copied here) and is built in a temporary folder with
# `gcc -Ofast -march=native -fopenmp`.  The model (default: the 110M F32 of
# `make bench`, $LLMQ_BENCH_DIR/110M-f32) is written in run.c's layout by
# tools/to_llama2c.py (q/k rows in its RoPE order, so both compute the same
# function).  Both start from BOS alone and decode NEW tokens greedily with
# THREADS OpenMP threads, interleaved (llama2.c, llmq, llama2.c, ...),
# RUNS times; the best of each and their ratio are printed.  Rates are
# run.c's "achieved tok/s" (every forward after the first) and llmq
# generate's decode_tok_per_s (every token after the first): the same
# positions 1..NEW.  The greedy tokens are compared too, as a check that the
# weights were laid out right (float rounding may send them apart late).
#
# Environment: BUILD (build), PYTHON (.venv/bin/python), NEW (256),
# RUNS (5), THREADS (2), LLMQ_BENCH_DIR (/tmp/llmq-bench).
set -euo pipefail
SRC=${1:?usage: tools/anchor_llama2c.sh LLAMA2C_SRC_DIR [MODEL_DIR]}
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
NEW=${NEW:-256}
RUNS=${RUNS:-5}
THREADS=${THREADS:-2}
DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
MODEL=${2:-$DIR/110M-f32}
[ -f "$SRC/run.c" ] || { echo "anchor_llama2c: no run.c in $SRC" >&2; exit 2; }
[ -x "$BUILD/llmq" ] || { echo "anchor_llama2c: build $BUILD/llmq first (make BUILD=$BUILD)" >&2; exit 2; }
if [ ! -f "$MODEL/model.safetensors" ]; then
  [ -z "${2:-}" ] || { echo "anchor_llama2c: no $MODEL/model.safetensors" >&2; exit 2; }
  mkdir -p "$DIR"
  "$PYTHON" tools/gen_model.py --shape 110M --dtype f32 --out "$MODEL"
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -Ofast -march=native -fopenmp -o "$TMP/run" "$SRC/run.c" -lm
"$PYTHON" tools/to_llama2c.py --model "$MODEL" --out "$TMP/model.bin" --tokenizer "$TMP/tokenizer.bin"

# one run each: "tok/s ids" (ids comma-separated)
run_llama2c() {
  OMP_NUM_THREADS=$THREADS "$TMP/run" "$TMP/model.bin" -z "$TMP/tokenizer.bin" -t 0 -n $((NEW + 1)) -i "" \
      >"$TMP/l2c.out" 2>"$TMP/l2c.err"
  "$PYTHON" - "$TMP/l2c.out" "$TMP/l2c.err" <<'PY'
import re, sys
ids = re.findall(r"<t(\d+)>", open(sys.argv[1]).read())
rate = re.search(r"achieved tok/s: ([0-9.]+)", open(sys.argv[2]).read())
print(rate.group(1) if rate else 0, ",".join(ids))
PY
}
run_llmq() {
  OMP_NUM_THREADS=$THREADS "$BUILD/llmq" generate --model "$MODEL" --prompt-ids 1 --max-tokens $((NEW + 1)) \
      --temperature 0 --ignore-eos --json 2>/dev/null >"$TMP/llmq.json"
  "$PYTHON" -c 'import json, sys; r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(r["decode_tok_per_s"], ",".join(map(str, r["output_ids"])), r.get("kernels", "?"), r.get("threads", "?"))' \
      "$TMP/llmq.json"
}

echo "== llama2.c anchor: $(basename "$MODEL"), BOS + $NEW greedy tokens, $THREADS threads, best of $RUNS" \
     "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs;$(uptime | sed 's/.*load/ load/'))"
best_l2c=0 best_llmq=0
for r in $(seq "$RUNS"); do
  read -r t_l2c ids_l2c < <(run_llama2c)
  read -r t_llmq ids_llmq isa nthreads < <(run_llmq)
  echo "run $r: llama2.c $t_l2c tok/s  llmq $t_llmq tok/s (kernels $isa, $nthreads threads)"
  best_l2c=$("$PYTHON" -c "print(max($best_l2c, $t_l2c))")
  best_llmq=$("$PYTHON" -c "print(max($best_llmq, $t_llmq))")
done
"$PYTHON" - "$ids_l2c" "$ids_llmq" <<'PY'
import sys
a, b = sys.argv[1].split(","), sys.argv[2].split(",")
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
note = " (llama2.c stopped early: it ends on BOS)" if len(a) < len(b) else ""
print(f"greedy tokens: the first {same} of {min(len(a), len(b))} agree{note}")
PY
echo "best: llama2.c $best_l2c tok/s  llmq $best_llmq tok/s (kernels $isa)  llmq/llama2.c" \
     "$("$PYTHON" -c "print(f'{$best_llmq / $best_l2c:.2f}x')")"
