#!/usr/bin/env bash
# tests/gpu/bench.sh — CUDA engine throughput for Llama 3 8B's shape
# (random BF16 weights), with FP16 and BF16 activations, printed as a
# markdown table headed by the GPU's name (paste it into docs/benchmarks.md).
#
# Instead of writing a 16 GB model, it measures two models with Llama 3 8B's
# layer shapes, embeddings and vocabulary but 2 and 8 layers
# (tools/gen_model.py --shape llama3-8b --layers N: ~2.5 and ~5.1 GB) and
# extrapolates every figure to 32 layers: a step's time is a fixed part
# (embedding, final norm, LM head, sampling, launch overheads) plus one part
# per layer, so t(32) = t(2) + 30 * (t(8) - t(2)) / 6, and likewise the
# bytes read per step.  The two measured rows are printed too.
#
# Figures come from `llmq bench --backend cuda --json` (decode tok/s with 1, 8
# and 32 sequences, prefill tok/s of one 512-token prompt); the roofline
# ratio is batch-1 decode x weight bytes read per step / the GPU's peak DRAM
# bandwidth (from the device's memory clock and bus width; the measured
# read bandwidth is printed beside it).  On an H100, A10G or T4 a first
# row gives the counted target of each column (`llmq roofline`).  A third
# configuration runs BF16 with LLMQ_CUDA_GRAPHS=0 (every decode kernel
# launched one by one) to show what the step graphs gain (BENCH_NOGRAPHS=0 drops it), a fourth BF16 with
# LLMQ_CUDA_GEMM=fast (cuBLAS picks per call; not batch invariant) to show
# what the batch-invariant pinned GEMMs cost (BENCH_FAST=0 drops it);
# BENCH_PIN_NS="16 256" adds BF16 rows with other LLMQ_CUDA_GEMM_PIN_N.
#
# The models are generated once into $LLMQ_BENCH_DIR (default
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
LA=2 LB=8 LFULL=32
for L in $LA $LB; do
    if [ ! -f "$DIR/llama3-8b-bf16-$L/model.safetensors" ]; then
        echo "bench: generating $DIR/llama3-8b-bf16-$L (random weights, Llama 3 8B's shapes, $L layers)"
        t0=$(date +%s)
        "$PY" tools/gen_model.py --shape llama3-8b --layers "$L" --dtype bf16 --out "$DIR/llama3-8b-bf16-$L"
        echo "bench: generated in $(($(date +%s) - t0)) s"
    fi
done

info=$("$BIN/test_cuda_ops" --info)
echo "$info"
field() { "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
GPU=$(field "$info" device)
PEAK=$(field "$info" peak_bw_gbs)
MEAS=$(field "$info" measured_read_bw_gbs)

EXTRAP=$(mktemp)
trap 'rm -f "$EXTRAP"' EXIT
cat >"$EXTRAP" <<'EOF'
import json, sys
label, peak, a, b = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
la, lb, lf = (int(x) for x in sys.argv[5:8])
# seconds per step, linear in the layers: decode k runs k tokens a step, prefill 512
cols = [("decode_1_tok_s", 1), ("decode_8_tok_s", 8), ("decode_32_tok_s", 32), ("prefill_tok_s", 512)]
def row(name, r, lay):
    roof = r["decode_1_tok_s"] * r["step_bytes_1"] / (peak * 1e9) if peak > 0 else 0
    return (f"| {name} | {lay} | {r['decode_1_tok_s']:.1f} | {r['decode_8_tok_s']:.1f} | "
            f"{r['decode_32_tok_s']:.1f} | {r['prefill_tok_s']:.0f} | {r['step_bytes_1'] / 1e9:.2f} | {roof * 100:.0f}% |")
full = {}
for key, k in cols:
    ta, tb = k / a[key], k / b[key]
    full[key] = k / (ta + (lf - la) * (tb - ta) / (lb - la))
full["step_bytes_1"] = a["step_bytes_1"] + (lf - la) * (b["step_bytes_1"] - a["step_bytes_1"]) / (lb - la)
print(row(label + " (extrapolated)", full, lf))
print(row(label, b, lb))
print(row(label, a, la))
EOF

rows=()
run() { # run LABEL ENV...
    local label=$1; shift
    local a b
    a=$(env "$@" timeout 120 "$BIN/llmq" bench --backend cuda --model "$DIR/llama3-8b-bf16-$LA" --steps 32 --json)
    b=$(env "$@" timeout 120 "$BIN/llmq" bench --backend cuda --model "$DIR/llama3-8b-bf16-$LB" --steps 32 --json)
    rows+=("$("$PY" "$EXTRAP" "$label" "$PEAK" "$a" "$b" "$LA" "$LB" "$LFULL")")
}
run "FP16 activations, pinned GEMMs" LLMQ_CUDA_DTYPE=f16
run "BF16 activations, pinned GEMMs" LLMQ_CUDA_DTYPE=bf16
# what the step graphs (a decode step replayed as one launch) are worth
if [ "${BENCH_NOGRAPHS:-1}" = 1 ]; then run "BF16 activations, pinned GEMMs, no step graphs" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GRAPHS=0; fi
if [ "${BENCH_FAST:-1}" = 1 ]; then run "BF16 activations, cuBLAS per call" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GEMM=fast; fi
for pn in ${BENCH_PIN_NS:-}; do run "BF16 activations, GEMMs pinned for n=$pn" LLMQ_CUDA_DTYPE=bf16 LLMQ_CUDA_GEMM_PIN_N="$pn"; done

# The counted target of each column (llmq roofline: the engine's step on the
# counting backend, Llama 3 8B's config, decode at a short context as
# llmq bench's), when the GPU is one of its table
case "$GPU" in
    *H100*) RGPU=H100 ;;
    *A10G*) RGPU=A10G ;;
    *T4*) RGPU=T4 ;;
    *) RGPU= ;;
esac
if [ -n "$RGPU" ]; then
    tok_s() { "$BIN/llmq" roofline --model llama3-8b --gpu "$RGPU" --context 64 --json "$@" |
        "$PY" -c 'import json, sys; s = json.load(sys.stdin)["steps"][0]; print("%.1f" % s["tok_s"])'; }
    step_gb=$("$BIN/llmq" roofline --model llama3-8b --gpu "$RGPU" --context 64 --batch 1 --json |
        "$PY" -c 'import json, sys; s = json.load(sys.stdin)["steps"][0]; print("%.2f" % (sum(k["weight_bytes"] for k in s["kernels"]) / 1e9))')
    rows=("| counted target on the $RGPU (llmq roofline, docs/benchmarks.md) | $LFULL | $(tok_s --batch 1) | $(tok_s --batch 8) | $(tok_s --batch 32) | $(tok_s --prefill 512) | $step_gb | 100% |" "${rows[@]}")
fi

echo
echo "### $GPU — Llama-3-8B shape, random BF16 weights ($(date -u +%Y-%m-%d))"
echo
echo "Peak DRAM bandwidth ${PEAK} GB/s (measured read: ${MEAS} GB/s). The 32-layer rows are extrapolated from"
echo "the $LA- and $LB-layer models measured below them (tests/gpu/bench.sh)."
echo
echo "| configuration | layers | decode 1 seq tok/s | decode 8 seqs tok/s | decode 32 seqs tok/s | prefill 512 tok/s | GB read per step | batch-1 roofline |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
