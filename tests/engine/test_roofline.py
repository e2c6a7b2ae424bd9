"""`llmq roofline` (worker/engine/roofline.c: the engine's step run on a
counting backend): every kernel's bytes and FLOPs for a tiny config against
the formulas written out here from the shapes (not from the counting code),
for decode and prefill, a sliding window, INT4 weights and two
tensor-parallel ranks; and the weights it holds for Llama 3 8B and Mistral 7B
equal what the memory estimator (`llmq vram`) counts, as does the decode
step's matrices plus the embedding table and the F32 vectors."""
import json
import math
import subprocess

import pytest

from llmqtest import BUILD

LLMQ = str(BUILD / "llmq")

# the tiny config: d 64, MLP 96, 2 layers, 4 query heads and 2 KV heads of 16, vocabulary 256
D, I, L, H, KV, HD, V = 64, 96, 2, 4, 2, 16, 256


def config(tmp_path, **extra):
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": D, "intermediate_size": I,
           "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV, "vocab_size": V,
           "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    cfg.update(extra)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def roofline(*args):
    r = subprocess.run([LLMQ, "roofline", *map(str, args), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def kernels(step):
    return {k["name"]: k for k in step["kernels"]}


def expected(n, n_out, kv_positions, attn_flops, wbytes, es=2, tp=1):
    """Per kernel: (calls, weight, act, kv bytes, flops) of a step of n tokens,
    n_out of them with logits, on rank 0 of tp."""
    h, kv, i, v = H // tp, max(KV // tp, 1), I // tp, V // tp
    q, k = h * HD, kv * HD
    mm = lambda rows, cols, rows_out=None: (L, L * wbytes(rows, cols), L * n * (rows + cols) * es, 0,
                                            L * 2 * n * rows * cols)
    e = {
        "embed": (1, n * D * 2, n * D * es, 0, 0),  # every id of the test is below V / tp
        "rmsnorm": (2, 2 * D * 4, 2 * (n + n_out) * D * es, 0, 0),  # layer 0's input, the final norm
        "add_rmsnorm": (2 * L - 1, (2 * L - 1) * D * 4, (2 * L - 1) * 4 * n * D * es, 0, 0),
        "matmul q": mm(q, D), "matmul k": mm(k, D), "matmul v": mm(k, D), "matmul o": mm(D, q),
        "matmul gate": mm(i, D), "matmul up": mm(i, D), "matmul down": mm(D, i),
        "rope": (L, 0, L * 2 * n * (q + k) * es, 0, 0),
        "kv_store": (L, 0, L * 2 * n * k * es, L * 2 * n * k * es, 0),
        "attention": (L, 0, L * 2 * n * q * es, L * 2 * kv_positions * k * es, L * attn_flops * h),
        "swiglu": (L, 0, L * 3 * n * i * es, 0, 0),
        "add": (1, 0, 3 * n * D * es, 0, 0),
        "gather_rows": (1, 0, 2 * n_out * D * es, 0, 0),
        "matmul lm_head": (1, wbytes(v, D), n_out * (D + v) * es, 0, 2 * n_out * v * D),
    }
    return e


def check(step, exp):
    got = kernels(step)
    assert set(got) - {"all_reduce"} == set(exp)
    for name, (calls, w, a, kvb, fl) in exp.items():
        k = got[name]
        if name == "embed" and "all_reduce" in got:  # a vocabulary shard: only the ids in it are read
            assert k["weight_bytes"] % (D * 2) == 0 and 0 < k["weight_bytes"] <= w
            w = k["weight_bytes"]
        assert (k["calls"], k["weight_bytes"], k["act_bytes"], k["kv_bytes"], k["flops"]) == (calls, w, a, kvb, fl), name


bf16 = lambda rows, cols: rows * cols * 2


def test_decode_and_prefill_counts(tmp_path):
    B, C, P = 8, 100, 48
    out = roofline("--model", config(tmp_path), "--batch", B, "--context", C, "--prefill", P)
    assert out["act_dtype"] == "bf16" and out["gpu"] == "H100"
    dec, pre = out["steps"]
    # decode: B tokens each at position C-1, attending C positions: q.k and p.v, 2 FLOPs a multiply-add
    check(dec, expected(B, B, B * C, B * 4 * HD * C, bf16))
    # prefill: one sequence, K/V of its P positions read once; token p attends p+1 positions
    check(pre, expected(P, 1, P, 4 * HD * P * (P + 1) // 2, bf16))
    # the roofline time: the larger of bytes / bandwidth and FLOPs / peak, summed over kernels
    for st in (dec, pre):
        t = sum(max((k["weight_bytes"] + k["act_bytes"] + k["kv_bytes"]) / 3350e9, k["flops"] / 989e12)
                for k in st["kernels"])
        assert st["time_s"] == pytest.approx(t, rel=1e-6)
        assert st["tok_s"] == pytest.approx(st["tokens"] / t, rel=1e-6)


def test_sliding_window(tmp_path):
    W, B, C, P = 32, 2, 100, 48
    out = roofline("--model", config(tmp_path, architectures=["MistralForCausalLM"], sliding_window=W),
                   "--batch", B, "--context", C, "--prefill", P)
    dec, pre = (kernels(s)["attention"] for s in out["steps"])
    assert dec["kv_bytes"] == L * B * 2 * W * KV * HD * 2  # only the window is read
    assert dec["flops"] == L * B * 4 * HD * H * W
    assert pre["kv_bytes"] == L * 2 * P * KV * HD * 2  # the union of the windows: every position
    assert pre["flops"] == L * 4 * HD * H * sum(min(p + 1, W) for p in range(P))


def test_int4_weights(tmp_path):
    G = 32

    def q4(rows, cols):  # kernels/quant.h's layout: nibbles in 8-byte units of 16, an F32 scale and a zero byte a group
        return rows * (8 * math.ceil(cols / 16) + 5 * math.ceil(cols / G))

    out = roofline("--model", config(tmp_path), "--dtype", "int4", "--q4-group", G, "--batch", 1, "--context", 20)
    check(out["steps"][0], expected(1, 1, 20, 4 * HD * 20, q4))  # the embedding stays bf16


def test_two_ranks(tmp_path):
    B, C = 4, 40
    out = roofline("--model", config(tmp_path), "--tp", 2, "--batch", B, "--context", C, "--gpu", "t4")
    assert out["act_dtype"] == "f16" and out["tensor_tflops"] == 65  # T4: no BF16 tensor cores
    st = out["steps"][0]
    f16 = lambda rows, cols: rows * cols * 2
    check(st, expected(B, B, B * C, B * 4 * HD * C, f16, tp=2))
    ar = kernels(st)["all_reduce"]
    assert ar["calls"] == 1 + 2 * L  # the embedding (a vocabulary shard), attention and MLP of each layer
    assert ar["link_bytes"] == ar["calls"] * 2 * (2 - 1) / 2 * B * D * 2  # a ring: 2 (N-1)/N of the buffer sent
    own = sum(max((k["weight_bytes"] + k["act_bytes"] + k["kv_bytes"]) / 320e9, k["flops"] / 65e12)
              for k in st["kernels"] if k["name"] != "all_reduce")
    assert st["time_s"] == pytest.approx(own + ar["link_bytes"] / 16e9, rel=1e-6)


@pytest.mark.parametrize("preset,dtype,vram_dtype,quant,tp", [
    ("llama3-8b", "bf16", "bf16", "none", 1), ("llama3-8b", "int4", "bf16", "int4", 1),
    ("llama3-8b", "int8", "bf16", "int8", 1), ("mistral-7b", "f16", "fp16", "none", 2)])
def test_weights_agree_with_the_estimator(preset, dtype, vram_dtype, quant, tp):
    out = roofline("--model", preset, "--dtype", dtype, "--tp", tp, "--batch", 1, "--context", 16)
    r = subprocess.run([LLMQ, "vram", "--model", preset, "--dtype", vram_dtype, "--quantization", quant, "--tp",
                        str(tp), "--gpu", "H100", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)["weight_bytes_per_gpu"]
    assert out["weight_bytes_held"] == est
    # a decode step reads every matrix once: with the whole embedding table
    # (only its looked-up rows are read) and the F32 vectors, the same bytes
    ks = kernels(out["steps"][0])
    d, layers, vocab = 4096, 32, {"llama3-8b": 128256, "mistral-7b": 32000}[preset]
    matrices = sum(k["weight_bytes"] for n, k in ks.items() if n.startswith("matmul"))
    vectors = (2 * layers + 1) * d * 4
    assert ks["rmsnorm"]["weight_bytes"] + ks["add_rmsnorm"]["weight_bytes"] == vectors
    assert matrices + vocab // tp * d * 2 + vectors == est


@pytest.mark.parametrize("gpu,dtype,quant,tp,batch", [("A10G", "bf16", "none", 1, 8), ("A10G", "bf16", "none", 1, 64),
                                                      ("A10G", "int4", "int4", 1, 64), ("T4", "f16", "none", 1, 1),
                                                      ("T4", "f16", "none", 2, 64)])
def test_fits_is_the_estimators_verdict(gpu, dtype, quant, tp, batch):
    out = roofline("--model", "llama3-8b", "--gpu", gpu, "--dtype", dtype, "--tp", tp, "--batch", batch,
                   "--context", 1024)
    r = subprocess.run([LLMQ, "vram", "--model", "llama3-8b", "--dtype", "fp16" if dtype == "f16" else "bf16",
                        "--quantization", quant, "--tp", str(tp), "--gpu", gpu, "--max-model-len", "1024",
                        "--max-num-seqs", str(batch), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out["steps"][0]["fits"] == json.loads(r.stdout)["fits"]
    # BF16 on one A10G holds 37 sequences of 1024 tokens, F16 weights alone do not fit one T4
    assert out["steps"][0]["fits"] == ((gpu, dtype, batch, tp) not in {("A10G", "bf16", 64, 1), ("T4", "f16", 1, 1)})
