#!/usr/bin/env bash
# tests/gpu/check_no_device.sh — on a machine without a GPU, the CUDA build's
# binaries must refuse `--backend cuda` cleanly: a non-zero exit and a
# message that says there is no CUDA device (not a crash, not a hang).
# Run by .ci/run after `make cuda`; on a machine with a GPU it does nothing.
set -u
cd "$(dirname "$0")/../.."
B=${CUDA_BUILD:-build-cuda}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "check_no_device: this machine has a GPU; nothing to check"
    exit 0
fi
model=../shared/models/stories260K
[ -d "$model" ] || model=tests/fixtures  # the backend is created before the model is read
bad=0
check() { # check NAME CMD...: expect exit != 0 and "no CUDA device" on stderr within 60 s
    local name=$1; shift
    local err rc
    err=$(timeout 60 "$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -ge 124 ] || ! grep -q "no CUDA device" <<<"$err"; then
        echo "check_no_device: FAIL $name: exit $rc, stderr: $err"
        bad=1
    else
        echo "check_no_device: ok   $name exits $rc: $(grep -m1 'no CUDA device' <<<"$err")"
    fi
}
check "llmq generate --backend cuda" "$B/llmq" generate --backend cuda --model "$model" --prompt-ids 1,2,3
check "llmq-worker --backend cuda" "$B/llmq-worker" --backend cuda --model "$model" --model-name check \
    --redis redis://127.0.0.1:1
check "bundle/llmq generate --backend cuda" "$B/bundle/llmq" generate --backend cuda --model "$model" --prompt-ids 1
exit $bad
