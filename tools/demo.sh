#!/usr/bin/env bash
# make demo: the whole fleet on one machine, on the CPU backend.
#
#   redis-server (a throwaway one, on a free port, in a temporary directory)
#   llmq-worker  serving $MODEL (a Hugging Face directory), else stories260K
#                from ../shared, else a generated tiny random-weight model
#   llmq-gateway the OpenAI-compatible and job HTTP API
#
# Then: a streamed chat completion and a streamed completion with curl
# (tokens appear as they come), the completion answered whole, a job submitted with `llmq submit` and
# polled with `llmq get`, and everything shut down cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-}
# A local demo: let the gateway start even as root (it refuses otherwise;
# docs/operations.md#security).
export LLMQ_ALLOW_ROOT=${LLMQ_ALLOW_ROOT:-1}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/llmq-demo.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

if [ -z "$MODEL" ]; then
  if [ -d ../shared/models/stories260K ]; then
    MODEL=../shared/models/stories260K
    echo "demo: serving the stories260K model from ../shared (MODEL=DIR serves another)"
  else
    MODEL=$TMP/tiny
    "$PYTHON" tools/gen_model.py --shape tiny --out "$MODEL" --train-tokenizer >/dev/null
    echo "demo: no MODEL and no ../shared: serving a generated tiny random-weight model (its text is noise)"
  fi
fi
RPORT=$(free_port); HPORT=$(free_port)
REDIS=redis://127.0.0.1:$RPORT
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$TMP" --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$RPORT"
"$BUILD/llmq-gateway" --redis "$REDIS" --listen "127.0.0.1:$HPORT" --models demo >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
# A model without a chat template of its own (stories260K, the generated one)
# gets the llama-2 [INST] format, so that the chat endpoint can be shown.
CHAT=()
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("chat_template") else 1)' \
  "$MODEL/tokenizer_config.json" 2>/dev/null || CHAT=(--chat-template llama-2)
"$BUILD/llmq-worker" --model "$MODEL" --model-name demo --redis "$REDIS" "${CHAT[@]}" >"$TMP/worker.log" 2>&1 &
PIDS+=($!)
wait_port "$HPORT"
echo "demo: redis $REDIS, gateway http://127.0.0.1:$HPORT, worker for model 'demo'"
echo
echo "== POST /v1/chat/completions, stream: true (server-sent events as tokens are generated)"
curl -sN "http://127.0.0.1:$HPORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"demo","messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":16,"stream":true}'
echo
echo "== POST /v1/completions, stream: true"
curl -sN "http://127.0.0.1:$HPORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model":"demo","prompt":"Once upon a time","max_tokens":24,"temperature":0,"stream":true}'
echo
echo "== the same completion, not streamed"
curl -s "http://127.0.0.1:$HPORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model":"demo","prompt":"Once upon a time","max_tokens":24,"temperature":0}'
echo; echo
echo "== llmq submit (straight into Redis), then llmq get until it is done"
ID=$("$BUILD/llmq" submit --redis "$REDIS" --model demo --prompt "The little dog" --max-tokens 24 --seed 7)
echo "submitted job $ID"
for _ in $(seq 100); do
  OUT=$("$BUILD/llmq" get --redis "$REDIS" "$ID")
  case "$OUT" in *'"status":"done"'*|*'"status":"failed"'*) break ;; esac
  sleep 0.1
done
echo "$OUT"
echo
echo "demo: done; shutting down"
