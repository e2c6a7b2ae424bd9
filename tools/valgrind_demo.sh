#!/usr/bin/env bash
# tools/valgrind_demo.sh: the demo fleet under valgrind, ended
# with SIGTERM, must show no memory error and no leak.
#
#   redis-server   a throwaway one (not under valgrind)
#   llmq-worker    under valgrind, serving a generated tiny model (tools/gen_model.py)
#   llmq-gateway   under valgrind
#   llmq           under valgrind, for `llmq submit --wait`
#
# Traffic: a completion, a streamed completion, a streamed chat completion, a
# job through the job API (POST, poll GET, SSE events) and one through
# `llmq submit`.  Then SIGTERM to gateway and worker: both must drain and
# exit 0.  valgrind runs with --leak-check=full and fails (exit 99) on any
# memory error and on "definitely" or "indirectly lost" blocks; "still
# reachable" and "possibly lost" (libgomp's thread pool, hiredis/libev
# statics that live until exit) do not count.  tools/valgrind.supp holds the
# suppressions, third-party only.
#
# Run by tests/security/test_valgrind.py (so by `make test`), ~15 s here.
#
# Environment: BUILD (default build-valgrind), brought up to date here with
# ARCH=x86-64-v3 (valgrind 3.19 does not decode the AVX-512 that
# -march=native emits on some machines; never a sanitizer build: valgrind
# cannot run those), PYTHON, VALGRIND_KEEP=1 keeps the logs' folder.
# Exit status: 0 clean, 1 a check failed (the valgrind reports are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-valgrind}
PYTHON=${PYTHON:-.venv/bin/python}
VG_EXIT=99
TMP=$(mktemp -d "${TMPDIR:-/tmp}/llmq-valgrind.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${VALGRIND_KEEP:-0}" = 1 ]; then echo "valgrind: logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

command -v valgrind >/dev/null || { echo "valgrind: not installed (make deps)" >&2; exit 1; }
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory BUILD="$BUILD" ARCH=x86-64-v3 SANITIZER= -j"$(nproc)" \
  "$BUILD/llmq-gateway" "$BUILD/llmq-worker" "$BUILD/llmq" >"$TMP/build.log" 2>&1 \
  || { echo "valgrind: building $BUILD/ failed" >&2; tail -30 "$TMP/build.log" >&2; exit 1; }

VG=(valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --error-exitcode=$VG_EXIT --num-callers=30 --suppressions=tools/valgrind.supp)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
wait_log() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
fail() {
  echo "valgrind: FAILED: $*" >&2
  for f in "$TMP"/*.vg "$TMP"/*.log; do [ -f "$f" ] && { echo "---- $f"; tail -60 "$f"; }; done >&2
  exit 1
}

"$PYTHON" tools/gen_model.py --shape tiny --out "$TMP/tiny" --train-tokenizer >/dev/null
RPORT=$(free_port); HPORT=$(free_port)
REDIS=redis://127.0.0.1:$RPORT
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$TMP" --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$RPORT" || fail "redis-server did not start"

# Two OpenMP threads: enough to exercise the pool, little for valgrind to serialize.
export OMP_NUM_THREADS=2 LLMQ_LOG=info LLMQ_ALLOW_ROOT=1
"${VG[@]}" --log-file="$TMP/worker.vg" "$BUILD/llmq-worker" --model "$TMP/tiny" --model-name demo --redis "$REDIS" \
  --chat-template llama-2 --max-num-seqs 4 >"$TMP/worker.log" 2>&1 &
WPID=$!; PIDS+=($WPID)
"${VG[@]}" --log-file="$TMP/gateway.vg" "$BUILD/llmq-gateway" --redis "$REDIS" --listen "127.0.0.1:$HPORT" \
  --models demo >"$TMP/gateway.log" 2>&1 &
GPID=$!; PIDS+=($GPID)
wait_port "$HPORT" || fail "gateway did not listen"
wait_log "$TMP/worker.log" "serving demo" || fail "worker did not start"
H=http://127.0.0.1:$HPORT
JSON=(-H 'Content-Type: application/json')

out=$(curl -sf --max-time 120 "$H/v1/completions" "${JSON[@]}" \
  -d '{"model":"demo","prompt":"Once upon a time","max_tokens":16,"temperature":0}') || fail "completion"
grep -q '"finish_reason"' <<<"$out" || fail "completion answer: $out"
out=$(curl -sfN --max-time 120 "$H/v1/completions" "${JSON[@]}" \
  -d '{"model":"demo","prompt":"The dog","max_tokens":16,"stream":true}') || fail "streamed completion"
grep -q 'data: \[DONE\]' <<<"$out" || fail "streamed completion answer: $out"
out=$(curl -sfN --max-time 120 "$H/v1/chat/completions" "${JSON[@]}" \
  -d '{"model":"demo","messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":16,"stream":true}') \
  || fail "streamed chat"
grep -q 'chat.completion.chunk' <<<"$out" && grep -q 'data: \[DONE\]' <<<"$out" || fail "streamed chat answer: $out"
out=$(curl -sf --max-time 60 "$H/v1/jobs" "${JSON[@]}" -d '{"model":"demo","prompt":"A cat","max_tokens":16,"seed":5}') \
  || fail "job submit"
ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$out")
for _ in $(seq 600); do
  out=$(curl -sf --max-time 30 "$H/v1/jobs/$ID") || fail "job get"
  case "$out" in *'"status":"done"'*) break ;; *'"status":"failed"'*) fail "job failed: $out" ;; esac
  sleep 0.1
done
grep -q '"status":"done"' <<<"$out" || fail "job not done: $out"
curl -sfN --max-time 60 "$H/v1/jobs/$ID/events" | grep -q '"finish"' || fail "job events"
"${VG[@]}" --log-file="$TMP/cli.vg" "$BUILD/llmq" submit --redis "$REDIS" --model demo --prompt "The sun" \
  --max-tokens 8 --wait >"$TMP/cli.log" 2>&1 || fail "llmq submit --wait (exit $?)"
grep -q '"status":"done"' "$TMP/cli.log" || fail "llmq submit: $(cat "$TMP/cli.log")"

kill -TERM "$GPID" "$WPID"
rc_g=0; rc_w=0
wait "$GPID" || rc_g=$?
wait "$WPID" || rc_w=$?
PIDS=("${PIDS[0]}")
status=0
for p in gateway:$rc_g worker:$rc_w cli:0; do
  name=${p%%:*}; rc=${p#*:}
  vg="$TMP/$name.vg"
  errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$vg" | tail -1 | grep -Eo '[0-9]+$' || echo "?")
  def=$(grep -Eo 'definitely lost: [0-9,]+ bytes' "$vg" | tail -1 | grep -Eo '[0-9,]+' || echo 0)
  ind=$(grep -Eo 'indirectly lost: [0-9,]+ bytes' "$vg" | tail -1 | grep -Eo '[0-9,]+' || echo 0)
  printf 'valgrind: %-8s exit %-3s errors %s, definitely lost %s bytes, indirectly lost %s bytes\n' \
    "$name" "$rc" "$errs" "$def" "$ind"
  if [ "$rc" != 0 ] || [ "$errs" != 0 ]; then
    status=1
    echo "---- $vg"; sed -n '/== [0-9]* errors\? in context\|Invalid\|uninitialised\|definitely lost in\|indirectly lost in/,/^==[0-9]*== $/p' "$vg" | head -150
    echo "---- $TMP/$name.log"; tail -20 "$TMP/$name.log"
  fi
done
[ "$status" = 0 ] && echo "valgrind: clean"
exit "$status"
