#!/usr/bin/env bash
# tests/gpu/bench.sh — CUDA engine throughput on a random-weight model of
# Llama 3 8B's shape (tools/gen_model.py --shape llama3-8b --dtype bf16),
# with FP16 and BF16 activations, printed as a markdown table headed by the
# GPU's name (paste it into docs/benchmarks.md).
#
# Figures come from `llmq bench --backend cuda --json` (decode tok/s with 1, 8
# and 32 sequences, prefill tok/s of one 512-token prompt); the roofline
# ratio is batch-1 decode x weight bytes read per step / the GPU's peak DRAM
# bandwidth (from the device's memory clock and bus width; the measured
# read bandwidth is printed beside it).  A third row runs BF16 with
# LLMQ_CUDA_GRAPHS=0 (every decode kernel launched one by one) to show what
# the step graphs gain (BENCH_NOGRAPHS=0 drops it), a fourth BF16 with
# LLMQ_CUDA_GEMM=fast (cuBLAS picks per call; not batch invariant) to show
# what the batch-invariant pinned GEMMs cost (BENCH_FAST=0 drops it);
# BENCH_PIN_NS="16 256" adds BF16 rows with other LLMQ_CUDA_GEMM_PIN_N.
#
# The model (~16 GB) is generated once into $LLMQ_BENCH_DIR (default
# /tmp/llmq-bench-gpu).  Binaries as in tests/gpu/run.sh.  Without a GPU it
# says so and exits 0.  Budget: < 5 min on an H100 (generation included).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=$(command -v python3 || command -v python)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "bench: no GPU on this machine (nvidia-smi lists none): nothing measured"
    exit 0
fi
BIN=$ROOT/build-cuda/bundle
[ -x "$BIN/llmq" ] || make cuda
# the CUDA libraries, found the way tests/gpu/run.sh finds them
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    ldd "$BIN/llmq" | grep -q "$lib => not found" || continue
    for sp in /usr/local/cuda/lib64 $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))'); do
        f=$(find "$sp" -name "$lib" 2>/dev/null | head -1)
        if [ -n "$f" ]; then export LD_LIBRARY_PATH=$(dirname "$f")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; break; fi
    done
done

DIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench-gpu}
MODEL=$DIR/llama3-8b-bf16
if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "bench: generating $MODEL (random weights, ~16 GB)"
    t0=$(date +%s)
    "$PY" tools/gen_model.py --shape llama3-8b --dtype bf16 --out "$MODEL"
    echo "bench: generated in $(($(date +%s) - t0)) s"
fi

info=$("$BIN/test_cuda_ops" --info)
echo "$info"
field() { "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
GPU=$(field "$info" device)
PEAK=$(field "$info" peak_bw_gbs)
MEAS=$(field "$info" measured_read_bw_gbs)

rows=()
run() { # run LABEL ENV...
    local label=$1; shift
    local out
    out=$(env "$@" timeout 240 "$BIN/llmq" bench --backend cuda --model "$MODEL" --steps 32 --json)
    rows+=("$("$PY" - "$label" "$PEAK" "$out" <<'EOF'
import json, sys
label, peak, r = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
roof = r["decode_1_tok_s"] * r["weight_bytes"] / (peak * 1e9) if peak > 0 else 0
print(f"| {label} | {r['decode_1_tok_s']:.1f} | {r['decode_8_tok_s']:.1f} | {r['decode_32_tok_s']:.1f} "
      f"| {r['prefill_tok_s']:.0f} | {r['weight_bytes'] / 1e9:.2f} | {roof * 100:.0f}% |")
EOF
)")
}
run "FP16 activations, pinned GEMMs" LLMQ_CUDA_DTYPE=f16
run "BF16 activations, pinned GEMMs" LLMQ_CUDA_DTYPE=bf16
# what the step graphs (a decode step replayed as one launch) are worth
if [ "${BENCH_NOGRAPHS:-1}" = 1 ]; then run "BF16 activations, pinned GEMMs, no step graphs" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GRAPHS=0; fi
if [ "${BENCH_FAST:-1}" = 1 ]; then run "BF16 activations, cuBLAS per call" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GEMM=fast; fi
for pn in ${BENCH_PIN_NS:-}; do run "BF16 activations, GEMMs pinned for n=$pn" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GEMM_PIN_N="$pn"; done

echo
echo "### $GPU — Llama-3-8B shape, random BF16 weights ($(date -u +%Y-%m-%d))"
echo
echo "Peak DRAM bandwidth ${PEAK} GB/s (measured read: ${MEAS} GB/s)."
echo
echo "| configuration | decode 1 seq tok/s | decode 8 seqs tok/s | decode 32 seqs tok/s | prefill 512 tok/s | GB read per step | batch-1 roofline |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
