#!/usr/bin/env bash
# make bench-serving: the whole local stack (redis-server, llmq-worker on the
# CPU backend, llmq-gateway) serving the 110M shape, measured end to end with
# llmq-loadtest through the gateway's streaming /v1/completions at
# concurrency 1, 4, 16 and 64 (closed loop).
#
# The model: random BF16 weights of the 110M shape (tools/gen_model.py:
# dim 768, 12 layers, vocab 32000) with the Llama 2 tokenizer from
# ../shared/tokenizers/llama-spm, whose vocabulary is exactly 32000 (the
# stories260K tokenizer has 512 ids, so most of a random model's output
# would detokenize to nothing and the gateway would send no SSE event for
# it).  Prompts are token ids, so their length is exact; ignore_eos makes
# every request generate exactly --output-tokens.
#
# Environment: BUILD, PYTHON, LLMQ_BENCH_DIR (models, default
# /tmp/llmq-bench), BENCH_OUT (JSON/SVG/table, default $LLMQ_BENCH_DIR/serving),
# BENCH_CONC (default "1 4 16 64"), BENCH_PROMPT / BENCH_OUTPUT (default 128).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
OUT=${BENCH_OUT:-$DIR/serving}
CONC=${BENCH_CONC:-1 4 16 64}
PROMPT=${BENCH_PROMPT:-128}
OUTPUT=${BENCH_OUTPUT:-128}
SHARED=${LLMQ_SHARED:-../shared}
TOK="$SHARED/tokenizers/llama-spm"
MODEL="$DIR/110M-bf16-llama-spm"

if [ ! -f "$TOK/tokenizer.json" ]; then
  echo "bench-serving needs $TOK (the Llama 2 tokenizer, vocabulary 32000) from ../shared" >&2
  exit 1
fi
mkdir -p "$DIR" "$OUT"
[ -f "$MODEL/model.safetensors" ] || "$PYTHON" tools/gen_model.py --shape 110M --dtype bf16 --out "$MODEL" --tokenizer-from "$TOK"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); GPORT=$(free_port); MPORT=$(free_port)
LOGS="$OUT/logs"; mkdir -p "$LOGS"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >"$LOGS/redis.log" 2>&1 &
pids+=($!)
"$BUILD/llmq-worker" --model "$MODEL" --model-name m110 --redis "redis://127.0.0.1:$RPORT" \
  --max-num-seqs 64 --metrics-port "$MPORT" >"$LOGS/worker.log" 2>&1 &
pids+=($!)
# (a local benchmark: the gateway may run as root here, docs/operations.md#security)
LLMQ_ALLOW_ROOT=1 "$BUILD/llmq-gateway" --redis "redis://127.0.0.1:$RPORT" --listen "127.0.0.1:$GPORT" --models m110 \
  >"$LOGS/gateway.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$MPORT/readyz" "http://127.0.0.1:$GPORT/readyz"; do
  ready=0
  for _ in $(seq 300); do
    if "$PYTHON" -c "import sys,urllib.request; sys.exit(urllib.request.urlopen('$url', timeout=1).status != 200)" \
      2>/dev/null; then ready=1; break; fi
    sleep 0.2
  done
  [ "$ready" = 1 ] || { echo "$url never became ready; logs in $LOGS" >&2; exit 1; }
done

LT=("$BUILD/llmq-loadtest" --target "http://127.0.0.1:$GPORT" --model m110 --stream --seed 0 --quiet
    --token-range 259-31999 --prompt-tokens "$PROMPT" --output-tokens "$OUTPUT")
echo "== warm-up"
"${LT[@]}" --concurrency 1 --requests 2 --output-tokens 8 >/dev/null
for c in $CONC; do
  n=$((2 * c)); [ "$n" -lt 8 ] && n=8
  echo "== concurrency $c, $n requests"
  "${LT[@]}" --concurrency "$c" --requests "$n" --json "$OUT/c$c.json" --svg "$OUT/c$c.svg" | tee "$OUT/c$c.txt"
done

"$PYTHON" - "$OUT" $CONC <<'EOF' | tee "$OUT/table.md"
import json, os, platform, sys
out, conc = sys.argv[1], sys.argv[2:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
omp = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ)
print(f"Machine: {os.cpu_count()} cores, {cpu}; {omp or 'OpenMP defaults'}; load average at the end "
      f"{os.getloadavg()[0]:.1f} (other processes share the cores when it is above the core count)")
print()
print("| concurrency | requests | req/s | output tok/s | total tok/s | TTFT p50 / p99 (ms) "
      "| TPOT mean / p99 (ms) | ITL p50 / p99 (ms) | E2E p50 / p99 (s) | failed |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in conc:
    j = json.load(open(f"{out}/c{c}.json"))
    t, p, i, e = j["ttft_ms"], j["tpot_ms"], j["itl_ms"], j["e2e_ms"]
    print(f"| {c} | {j['completed']} | {j['request_throughput']:.2f} | {j['output_throughput']:.1f} "
          f"| {j['total_token_throughput']:.1f} | {t['p50']:.0f} / {t['p99']:.0f} | {p['mean']:.1f} / {p['p99']:.1f} "
          f"| {i['p50']:.1f} / {i['p99']:.1f} | {e['p50'] / 1e3:.2f} / {e['p99'] / 1e3:.2f} | {j['failed']} |")
EOF
echo "results in $OUT"
