#!/usr/bin/env bash
# tests/gpu/run.sh — the CUDA backend's checks, on a machine with a GPU; ends
# with one line:   gpu: N passed, N failed, N skipped (<GPU name>)
#
#   1. test_cuda_ops: every op against the CPU reference, F32/F16/BF16, many
#      shapes, NaN/Inf, sentinels, tolerances, bitwise batch invariance,
#      NCCL with one rank (each cmocka case counts once);
#   2. stories260K greedy ids with LLMQ_CUDA_DTYPE=f32 equal
#      reference_greedy.jsonl, each prompt alone and the 8 batched with
#      chunked prefill;
#   3. the batched generation equals the CPU backend's ids (f32);
#   4. F16 and BF16: the batched generation equals each prompt run alone
#      (the engine's batch invariance, bitwise); agreement with the
#      reference is printed, not required (16-bit activations may flip a
#      near tie);
#   5. step graphs: the generation with decode steps replayed from CUDA
#      graphs equals the one with LLMQ_CUDA_GRAPHS=0 (f32, bf16);
#   6. --memory-utilization, and INT8/INT4 generation: batch invariant, and
#      at least 7 of 8 prompts equal to the CPU's quantized ids.
#
# Binaries: build-cuda/bundle/ when it exists (built elsewhere by `make cuda`
# and carried here), else `make cuda` is run.  The CUDA libraries are found
# in /usr/local/cuda*/lib64 or in the Python nvidia-* wheels.
# The model: $LLMQ_SHARED/models/stories260K, ../shared, ./shared or ./.gpu.
# Without a GPU it says so and exits 0, claiming nothing.  Budget: < 5 min.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=$(command -v python3 || command -v python)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu: no GPU on this machine (nvidia-smi lists none): nothing was run, nothing passed"
    exit 0
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

# ---------------------------------------------------------------- binaries
BIN=$ROOT/build-cuda/bundle
if [ ! -x "$BIN/llmq" ] || [ ! -x "$BIN/test_cuda_ops" ]; then
    echo "gpu: no build-cuda/bundle/: running make cuda"
    make cuda || { echo "gpu: 0 passed, 1 failed, 0 skipped ($GPU): make cuda failed"; exit 1; }
fi
if [ ! -x "$BIN/llmq" ]; then
    echo "gpu: 0 passed, 1 failed, 0 skipped ($GPU): no nvcc here and no build-cuda/bundle/ carried"
    exit 1
fi

# CUDA libraries the bundle links dynamically
libdirs=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    if ! LD_LIBRARY_PATH=${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$BIN/test_cuda_ops" | grep -q "$lib => not found"; then
        continue
    fi
    found=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/$lib" ] && found=$d && break
    done
    if [ -z "$found" ] && [ -n "$PY" ]; then
        for sp in $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
            [ -d "$sp/nvidia" ] || continue
            f=$(find "$sp/nvidia" -name "$lib" 2>/dev/null | head -1)
            [ -n "$f" ] && found=$(dirname "$f") && break
        done
    fi
    [ -n "$found" ] && libdirs="$libdirs:$found"
done
export LD_LIBRARY_PATH=${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN/test_cuda_ops" | grep -q "not found"; then
    echo "gpu: missing libraries: $(ldd "$BIN/test_cuda_ops" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
    echo "gpu: 0 passed, 1 failed, 0 skipped ($GPU)"
    exit 1
fi

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "skip $*"; }
log=$(mktemp -d "${TMPDIR:-/tmp}/llmq-gpu.XXXXXX")

# ---------------------------------------------------------------- 1. op tests
echo "== test_cuda_ops on $GPU"
"$BIN/test_cuda_ops" --info | tee "$log/info.json"
CMOCKA_MESSAGE_OUTPUT=TAP timeout 240 "$BIN/test_cuda_ops" >"$log/ops.log" 2>&1
rc=$?
grep -E '^#' "$log/ops.log" | grep -v '^# *$' | head -60
while IFS= read -r l; do
    case "$l" in
    "ok "*) pass "ops: ${l#ok [0-9]* - }" ;;
    "not ok "*"# SKIP"*) fail "ops: ${l#not ok } (skipped on a machine with a GPU)" ;;
    "not ok "*) fail "ops: ${l#not ok }" ;;
    esac
done < <(grep -E '^(ok|not ok) [0-9]+' "$log/ops.log")
if [ $rc -ne 0 ] && ! grep -q '^not ok' "$log/ops.log"; then
    fail "test_cuda_ops exited $rc without a failed case"; tail -30 "$log/ops.log"
fi

# ---------------------------------------------------------------- 2-4. generation
MODEL=""
for d in "${LLMQ_SHARED:-/nonexistent}" "$ROOT/../shared" "$ROOT/shared" "$ROOT/.gpu"; do
    [ -f "$d/models/stories260K/reference_greedy.jsonl" ] && MODEL=$d/models/stories260K && break
    [ -f "$d/stories260K/reference_greedy.jsonl" ] && MODEL=$d/stories260K && break
done
if [ -z "$MODEL" ] || [ -z "$PY" ]; then
    skip "stories260K generation: no model (carry .gpu/stories260K, see kernels/cuda/README.md) or no python3"
else
    gen() { # gen OUTFILE BACKEND [extra args...]: the 8 reference prompts in one call, JSON lines
        local out=$1 be=$2; shift 2
        local args=()
        while IFS= read -r ids; do args+=(--prompt-ids "$ids"); done < <("$PY" -c '
import json, sys
for l in open(sys.argv[1]): print(",".join(map(str, json.loads(l)["prompt_ids"])))' "$MODEL/reference_greedy.jsonl")
        timeout 120 "$BIN/llmq" generate --model "$MODEL" --backend "$be" --json --max-tokens 48 --temperature 0 \
            "${args[@]}" "$@" >"$out" 2>"$out.err"
    }
    gen_alone() { # gen_alone OUTFILE BACKEND [ARGS...]: each prompt in its own call
        local out=$1 be=$2
        shift 2
        : >"$out"
        "$PY" -c '
import json, sys
for l in open(sys.argv[1]): print(",".join(map(str, json.loads(l)["prompt_ids"])))' "$MODEL/reference_greedy.jsonl" |
        while IFS= read -r ids; do
            timeout 60 "$BIN/llmq" generate --model "$MODEL" --backend "$be" --json --max-tokens 48 --temperature 0 \
                --prompt-ids "$ids" "$@" >>"$out" 2>>"$out.err" || echo '{"output_ids":"error"}' >>"$out"
        done
    }
    same() { # same A B: the output_ids of two JSON-lines files (B may be the reference), prints matches
        "$PY" - "$1" "$2" <<'EOF'
import json, sys
def ids(p):
    out = []
    for l in open(p):
        l = l.strip()
        if l.startswith("{"):
            out.append(json.loads(l).get("output_ids"))
    return out
a, b = ids(sys.argv[1]), ids(sys.argv[2])
n = sum(1 for x, y in zip(a, b) if x == y)
print(f"{n}/{max(len(a), len(b))}")
sys.exit(0 if n == len(a) == len(b) and n > 0 else 1)
EOF
    }
    REF=$MODEL/reference_greedy.jsonl
    for dt in f32 f16 bf16; do
        export LLMQ_CUDA_DTYPE=$dt
        if ! gen "$log/batch-$dt.jsonl" cuda --max-batched-tokens 24; then
            if [ $dt = bf16 ] && grep -q "needs sm_80" "$log/batch-$dt.jsonl.err"; then
                skip "bf16 generation: $(cat "$log/batch-$dt.jsonl.err")"; continue
            fi
            fail "$dt: llmq generate failed: $(tail -2 "$log/batch-$dt.jsonl.err")"; continue
        fi
        gen_alone "$log/alone-$dt.jsonl" cuda
        m=$(same "$log/alone-$dt.jsonl" "$log/batch-$dt.jsonl") && pass "$dt: batched (chunked prefill) == each alone ($m)" ||
            fail "$dt: batched != each alone ($m): the engine on CUDA is not batch invariant"
        if [ $dt = f32 ]; then
            m=$(same "$log/alone-$dt.jsonl" "$REF") && pass "f32: stories260K greedy == reference, each alone ($m)" ||
                fail "f32: stories260K greedy != reference ($m)"
            m=$(same "$log/batch-$dt.jsonl" "$REF") && pass "f32: stories260K greedy == reference, batched ($m)" ||
                fail "f32: batched greedy != reference ($m)"
            if gen "$log/batch-cpu.jsonl" cpu --max-batched-tokens 24; then
                m=$(same "$log/batch-$dt.jsonl" "$log/batch-cpu.jsonl") && pass "f32: batched ids == CPU backend's ($m)" ||
                    fail "f32: batched ids != CPU backend's ($m)"
            else
                fail "cpu: llmq generate failed: $(tail -2 "$log/batch-cpu.jsonl.err")"
            fi
        else
            m=$(same "$log/batch-$dt.jsonl" "$REF") || true
            echo "info $dt: $m prompts equal the F32 reference over all 48 tokens (not required)"
        fi
    done
    unset LLMQ_CUDA_DTYPE
    # step graphs: decode steps replayed from recordings (the runs above) give
    # the ids of every kernel launched one by one (LLMQ_CUDA_GRAPHS=0)
    for dt in f32 bf16; do
        [ -s "$log/batch-$dt.jsonl" ] || continue
        export LLMQ_CUDA_DTYPE=$dt
        if LLMQ_LOG=debug gen "$log/graphs-$dt.jsonl" cuda --max-batched-tokens 24 &&
            LLMQ_CUDA_GRAPHS=0 gen "$log/nographs-$dt.jsonl" cuda --max-batched-tokens 24; then
            rec=$(grep -c "recorded step graph" "$log/graphs-$dt.jsonl.err")
            m=$(same "$log/graphs-$dt.jsonl" "$log/nographs-$dt.jsonl") && [ "$rec" -gt 0 ] &&
                pass "$dt: step graphs ($rec recorded) == kernels one by one ($m)" ||
                fail "$dt: step graphs ($rec recorded) != kernels one by one ($m)"
        else
            fail "$dt: llmq generate failed: $(tail -2 "$log/graphs-$dt.jsonl.err" "$log/nographs-$dt.jsonl.err" 2>/dev/null)"
        fi
    done
    unset LLMQ_CUDA_DTYPE
    # the KV pool sized from the GPU's free memory once the weights are in
    export LLMQ_CUDA_DTYPE=f32
    if gen "$log/memutil.jsonl" cuda --memory-utilization 0.3; then
        m=$(same "$log/memutil.jsonl" "$REF") && pass "f32 --memory-utilization 0.3: greedy == reference ($m)" ||
            fail "f32 --memory-utilization 0.3: greedy != reference ($m)"
    else
        fail "--memory-utilization 0.3: llmq generate failed: $(tail -2 "$log/memutil.jsonl.err")"
    fi
    # weight-only int8/int4 on the GPU: batch invariant (bitwise: batched ==
    # each alone), and against the CPU backend's quantized path (same
    # quantized values, another summation order, so a near tie may flip one
    # prompt: at least 7 of the 8 must be equal over all 48 tokens)
    for q in int8 int4; do
        if gen "$log/q-$q.jsonl" cuda --quantization $q --max-batched-tokens 24 &&
            gen "$log/q-$q-cpu.jsonl" cpu --quantization $q --max-batched-tokens 24; then
            gen_alone "$log/q-$q-alone.jsonl" cuda --quantization $q
            m=$(same "$log/q-$q-alone.jsonl" "$log/q-$q.jsonl") && pass "$q: batched == each alone ($m)" ||
                fail "$q: batched != each alone ($m): the quantized matmul is not batch invariant"
            m=$(same "$log/q-$q.jsonl" "$log/q-$q-cpu.jsonl") || true
            if [ "${m%/*}" -ge 7 ] 2>/dev/null; then pass "$q: $m prompts equal the CPU's $q ids over 48 tokens"
            else fail "$q: only $m prompts equal the CPU's $q ids over 48 tokens (at least 7/8 expected)"; fi
        else
            fail "$q: llmq generate failed: $(tail -2 "$log/q-$q.jsonl.err" "$log/q-$q-cpu.jsonl.err" 2>/dev/null)"
        fi
    done
    unset LLMQ_CUDA_DTYPE
fi

if [ $failed -eq 0 ]; then rm -rf "$log"; else echo "logs kept in $log"; fi
echo "gpu: $passed passed, $failed failed, $skipped skipped ($GPU)"
[ $failed -eq 0 ]
