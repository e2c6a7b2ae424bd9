#!/usr/bin/env bash
# tools/anchor_llamacpp.sh LLAMA_CPP_SRC [MODEL_DIR...]
#
# llmq's CPU backend against llama.cpp on the same weights (issue 24): builds
# llama.cpp from a source tree outside this repository (CPU only, Release,
# GGML_NATIVE) into $LLMQ_ANCHOR_DIR, writes each model directory (Hugging
# Face layout) as GGUF in its own dtype with tools/to_gguf.py (llama.cpp's
# gguf-py), checks that both programs pick the same greedy token ids on it,
# then runs the benchmarks of both sides interleaved (one round: llama-bench,
# llama-batched-bench, llmq bench; ROUNDS rounds) and prints the best of each
# figure and the ratios llmq / llama.cpp.
#
# What each figure measures, the same on both sides (as client/cli/cmd_bench.c):
#   decode 1    one sequence, 32 tokens decoded after a 16-token prompt
#               (llama-bench -p 0 -n 32 -d 16)
#   prefill 512 one prompt of 512 tokens from an empty cache (llama-bench -p 512 -n 0)
#   decode 8    8 sequences of a 16-token prompt decoded together, 32 steps
#               (llama-batched-bench -npp 16 -ntg 32 -npl 8, its S_TG)
#   decode 32   32 sequences, 16 steps (-npp 16 -ntg 16 -npl 32)
# Both with $THREADS threads (llama.cpp -t, llmq OMP_NUM_THREADS).  llama.cpp
# runs as it does by default otherwise (F16 KV cache) with flash attention on
# (-fa on: what its "auto" picks on a CPU).
#
# Environment: LLMQ_ANCHOR_DIR (default /tmp/llmq-anchor; the llama.cpp build
# and the GGUF files are kept there and reused), BUILD (llmq's build folder,
# default build), PYTHON (default .venv/bin/python), ROUNDS (default 3),
# THREADS (default 2), LLMQ_BENCH_DIR (where the default models are made:
# /tmp/llmq-bench/110M-f32 and 110M-bf16, by tools/gen_model.py),
# LLMQ_BENCH_ARGS (more options for `llmq bench`, word-split, e.g. a KV
# cache type to match llama.cpp's F16 one).
# Not part of `make test`: it needs a llama.cpp source tree (PyPI's
# llama-cpp-python sdist bundles one under vendor/llama.cpp).
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
SRC=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
ADIR=${LLMQ_ANCHOR_DIR:-/tmp/llmq-anchor}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BDIR=${LLMQ_BENCH_DIR:-/tmp/llmq-bench}
if [ ! -f "$SRC/include/llama.h" ] || [ ! -d "$SRC/gguf-py/gguf" ]; then
  echo "$SRC: not a llama.cpp source tree (include/llama.h, gguf-py/)" >&2
  exit 2
fi
[ -x "$BUILD/llmq" ] || { echo "$BUILD/llmq: not built (make BUILD=$BUILD)" >&2; exit 2; }
mkdir -p "$ADIR/gguf"
log() { echo "[anchor $(date -u +%H:%M:%S)] $*" >&2; }

# ---- llama.cpp: configure once, then an incremental build of the three targets
LB="$ADIR/build"
if [ ! -f "$LB/CMakeCache.txt" ]; then
  log "configuring llama.cpp ($SRC) in $LB"
  cmake -S "$SRC" -B "$LB" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >"$ADIR/configure.log" 2>&1 ||
    { tail -30 "$ADIR/configure.log"; exit 1; }
fi
log "building llama-bench, llama-batched-bench and libllama (-j2; the first build takes a while)"
cmake --build "$LB" -j2 --target llama-bench llama-batched-bench llama >"$ADIR/build.log" 2>&1 ||
  { tail -30 "$ADIR/build.log"; exit 1; }
find_bin() { find "$LB" -type f -perm -u+x -name "$1" | head -1; }
LLAMA_BENCH=$(find_bin llama-bench)
BATCHED_BENCH=$(find_bin llama-batched-bench)

# greedy: the greedy token ids llama.cpp picks after a prompt of ids (no
# tokenizer involved), through libllama's C API.  Ours, built here.  A
# random-weight model with tied embeddings repeats the last token of any
# prompt (its own embedding dominates the logits), which any two
# implementations agree on: so both sides decode with the strongest
# repetition penalty the API allows (10), which makes every step pick a new
# token, decided by the whole model.
GREEDY="$ADIR/greedy"
cat >"$ADIR/greedy.c" <<'EOF'
/* greedy MODEL.gguf N_NEW THREADS PENALTY ID,ID,...: print N_NEW greedy
 * token ids, with the repetition penalty as llmq's sampler (and vLLM, HF)
 * applies it: every id of the prompt and of the output so far, once, its
 * logit divided by PENALTY when positive, multiplied when not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    const int n_new = atoi(argv[2]);
    const float pen = (float)atof(argv[4]);
    llama_token toks[512];
    int n = 0;
    for (char *p = strtok(argv[5], ","); p && n < 256; p = strtok(NULL, ",")) toks[n++] = atoi(p);
    if (n == 0 || n_new < 1 || n_new > 256) return 2;
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model *m = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!m) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = atoi(argv[3]);
    struct llama_context *ctx = llama_init_from_model(m, cp);
    if (!ctx) return 1;
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(m));
    float *lg = malloc(sizeof(float) * (size_t)vocab);
    char *seen = calloc((size_t)vocab, 1);
    if (!lg || !seen) return 1;
    llama_token *cur = toks;
    int len = n;
    for (int k = 0; k < n_new; k++) {
        if (llama_decode(ctx, llama_batch_get_one(cur, len))) return 1;
        memcpy(lg, llama_get_logits_ith(ctx, -1), sizeof(float) * (size_t)vocab);
        memset(seen, 0, (size_t)vocab);
        for (int i = 0; i < n; i++) {
            const llama_token id = toks[i];
            if (id < 0 || id >= vocab || seen[id]) continue;
            seen[id] = 1;
            lg[id] = lg[id] > 0 ? lg[id] / pen : lg[id] * pen;
        }
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (lg[i] > lg[best]) best = i;
        printf(k ? ",%d" : "%d", best);
        toks[n] = best;
        cur = &toks[n++];
        len = 1;
    }
    printf("\n");
    free(lg);
    free(seen);
    llama_free(ctx);
    llama_model_free(m);
    return 0;
}
EOF
libs=()
for l in libllama.a libggml.a libggml-cpu.a libggml-base.a; do
  f=$(find "$LB" -name "$l" | head -1)
  [ -n "$f" ] || { echo "$l not found under $LB" >&2; exit 1; }
  libs+=("$f")
done
if [ ! -x "$GREEDY" ] || [ "$ADIR/greedy.c" -nt "$GREEDY" ] || [ "${libs[0]}" -nt "$GREEDY" ]; then
  gcc -O2 -std=c11 -I"$SRC/include" -I"$SRC/ggml/include" "$ADIR/greedy.c" "${libs[@]}" \
      -fopenmp -lstdc++ -lm -lpthread -o "$GREEDY"
fi

# ---- models: ours, then GGUF in the same dtype
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  for dt in f32 bf16; do
    [ -f "$BDIR/110M-$dt/model.safetensors" ] ||
      "$PYTHON" tools/gen_model.py --shape 110M --dtype "$dt" --out "$BDIR/110M-$dt" >&2
    models+=("$BDIR/110M-$dt")
  done
fi
gguf_of() { echo "$ADIR/gguf/$(basename "$1").gguf"; }
for m in "${models[@]}"; do
  g=$(gguf_of "$m")
  if [ ! -f "$g" ] || [ "$m/model.safetensors" -nt "$g" ] || [ tools/to_gguf.py -nt "$g" ]; then
    log "writing $g"
    PYTHONPATH="$SRC/gguf-py" "$PYTHON" tools/to_gguf.py "$m" "$g.tmp" >&2
    mv "$g.tmp" "$g"
  fi
done

# ---- the same weights: greedy ids of a short prompt on both sides
export OMP_NUM_THREADS=$THREADS
PROMPT=1,13,26,39,52,65,78,91
NEW=8
PENALTY=10
for m in "${models[@]}"; do
  a=$(OMP_NUM_THREADS=$THREADS "$BUILD/llmq" generate --model "$m" --prompt-ids "$PROMPT" --max-tokens $NEW \
        --temperature 0 --repetition-penalty $PENALTY --ignore-eos --json 2>/dev/null |
      "$PYTHON" -c 'import json, sys; print(",".join(map(str, json.loads(sys.stdin.readline())["output_ids"])))')
  b=$("$GREEDY" "$(gguf_of "$m")" $NEW "$THREADS" $PENALTY "$PROMPT")
  same=$("$PYTHON" -c "a, b = '$a'.split(','), '$b'.split(',')
n = 0
while n < len(a) and n < len(b) and a[n] == b[n]: n += 1
print(n)")
  log "greedy ids after $PROMPT, $(basename "$m"): llmq $a | llama.cpp $b | first $same of $NEW agree"
  if [ "$same" -lt 1 ]; then
    echo "the GGUF of $m does not compute what llmq computes (first greedy token differs)" >&2
    exit 1
  fi
done

# ---- benchmarks, interleaved
# other processes on the cores make both sides' OpenMP threads wait for each
# other's time slices: at a load average of 3-10 on 2 cores runs came out
# 2-40x slower and the ratios meaningless, so say what the load was
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD0%% *}" -v n="$(nproc)" 'BEGIN { exit !(l >= n / 2) }'; then
  log "warning: load average $LOAD0 on $(nproc) cores: the figures will not be a quiet machine's"
fi
RES="$ADIR/results.jsonl"
: >"$RES"
for r in $(seq "$ROUNDS"); do
  for m in "${models[@]}"; do
    g=$(gguf_of "$m")
    w=$(basename "$m")
    log "round $r/$ROUNDS $w: llama-bench"
    "$LLAMA_BENCH" -m "$g" -t "$THREADS" -fa on -p 512 -n 0 -r 1 -o jsonl 2>/dev/null |
      W=$w S=llama.cpp F=prefill_512 "$PYTHON" -c 'import json, os, sys
for l in sys.stdin:
    j = json.loads(l)
    print(json.dumps(dict(w=os.environ["W"], side=os.environ["S"], fig=os.environ["F"], v=max(j["samples_ts"]),
                          fa=j.get("flash_attn"), kv=j.get("type_k"))))' >>"$RES"
    "$LLAMA_BENCH" -m "$g" -t "$THREADS" -fa on -p 0 -n 32 -d 16 -r 1 -o jsonl 2>/dev/null |
      W=$w S=llama.cpp F=decode_1 "$PYTHON" -c 'import json, os, sys
for l in sys.stdin:
    j = json.loads(l)
    print(json.dumps(dict(w=os.environ["W"], side=os.environ["S"], fig=os.environ["F"], v=max(j["samples_ts"]),
                          fa=j.get("flash_attn"), kv=j.get("type_k"))))' >>"$RES"
    log "round $r/$ROUNDS $w: llama-batched-bench"
    for pt in 8:32 32:16; do
      pl=${pt%:*} tg=${pt#*:}
      # its results go through llama.cpp's log thread, which may lose the
      # last lines at exit: a batch of 1 runs after the one measured, and a
      # run whose row is missing is run again (3 tries)
      for try in 1 2 3; do
        row=$("$BATCHED_BENCH" -m "$g" -t "$THREADS" -tb "$THREADS" -c $((pl * (16 + tg))) -b 2048 -ub 512 -fa on \
                -npp 16 -ntg "$tg" -npl "$pl,1" --output-format jsonl 2>/dev/null | grep "\"pl\": $pl," || true)
        [ -n "$row" ] && break
        log "llama-batched-bench printed no row for $pl sequences (try $try)"
      done
      [ -n "$row" ] || { echo "llama-batched-bench: no result for $pl sequences" >&2; exit 1; }
      echo "$row" | W=$w F=decode_$pl "$PYTHON" -c 'import json, os, sys
j = json.loads(sys.stdin.readline())
print(json.dumps(dict(w=os.environ["W"], side="llama.cpp", fig=os.environ["F"], v=j["speed_tg"], fa=j["flash_attn"])))' \
        >>"$RES"
    done
    log "round $r/$ROUNDS $w: llmq bench"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=$THREADS "$BUILD/llmq" bench --model "$m" --read-bw 1 --json ${LLMQ_BENCH_ARGS:-} |
      W=$w "$PYTHON" -c 'import json, os, sys
j = json.loads(sys.stdin.readline())
for f, k in (("decode_1", "decode_1_tok_s"), ("prefill_512", "prefill_tok_s"), ("decode_8", "decode_8_tok_s"),
             ("decode_32", "decode_32_tok_s")):
    print(json.dumps(dict(w=os.environ["W"], side="llmq", fig=f, v=j[k], isa=j["isa"], dtype=j["dtype"],
                          threads=j["threads"], prefill_tokens=j["prefill_tokens"])))' >>"$RES"
  done
done

# ---- the table
CPU=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
        grep -xE 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|avx512_fp16|amx_bf16|amx_int8|avx_vnni' |
        tr '\n' ' ')
LOAD="$LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
CPU="$CPU" FLAGS="$FLAGS" LOAD="$LOAD" ROUNDS=$ROUNDS THREADS=$THREADS "$PYTHON" - "$RES" <<'EOF'
import collections, json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = collections.defaultdict(float)
meta = {}
for r in rows:
    k = (r["w"], r["side"], r["fig"])
    best[k] = max(best[k], r["v"])
    meta.setdefault((r["w"], r["side"]), {}).update({x: r[x] for x in ("isa", "dtype", "fa", "kv") if r.get(x) is not None})
figs = ["decode_1", "prefill_512", "decode_8", "decode_32"]
names = {"decode_1": "decode 1 seq", "prefill_512": "prefill 512", "decode_8": "decode 8 seqs", "decode_32": "decode 32 seqs"}
print(f"llmq vs llama.cpp, {os.environ['THREADS']} threads, best of {os.environ['ROUNDS']} interleaved rounds (tok/s)")
print(f"cpu: {os.environ['CPU']}; flags: {os.environ['FLAGS'].strip()}; load average {os.environ['LOAD']}")
for w in dict.fromkeys(r["w"] for r in rows):
    lm, ll = meta.get((w, "llmq"), {}), meta.get((w, "llama.cpp"), {})
    print(f"{w}: llmq {lm.get('dtype', '?')} weights, kernels {lm.get('isa', '?')}; llama.cpp KV {ll.get('kv', '?')}, "
          f"flash attention {ll.get('fa', '?')}")
print()
print("| weights | side | " + " | ".join(names[f] for f in figs) + " |")
print("|---|---|" + "---|" * len(figs))
for w in dict.fromkeys(r["w"] for r in rows):
    for side in ("llmq", "llama.cpp"):
        print(f"| {w} | {side} | " + " | ".join(f"{best[(w, side, f)]:.1f}" for f in figs) + " |")
    ratio = [best[(w, "llmq", f)] / best[(w, "llama.cpp", f)] if best[(w, "llama.cpp", f)] else float("nan") for f in figs]
    print(f"| {w} | llmq / llama.cpp | " + " | ".join(f"**{x:.2f}**" for x in ratio) + " |")
EOF
