"""tools/to_gguf.py (our Hugging Face -> GGUF writer for the llama.cpp anchor,
tools/anchor_llamacpp.sh) read back by an independent reader: gguf-py's
GGUFReader: from the llama.cpp source tree named by LLAMA_CPP_SRC when set,
else the gguf package make deps installs (ggml-org's gguf-py from PyPI).  The input side is read from the safetensors file here.

Checked: the hyperparameters llama.cpp reads, the tensor names llama.cpp
expects for a tied Llama with grouped KV heads (no output.weight), the
dtypes (matrices as stored, RMSNorm weights F32), every tensor's bits, and
for q_proj/k_proj that the GGUF rows under llama.cpp's RoPE (adjacent pairs)
give the attention scores Hugging Face's RoPE (half-split pairs) gives on
the original rows, at several positions: the property the row permutation
exists for, computed from the two RoPE definitions, not from the writer's
permutation."""
import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from llmqtest import ROOT

SRC = os.environ.get("LLAMA_CPP_SRC")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dts = {"F32": "<f4", "BF16": "<u2"}
    return {k: (v["dtype"], np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dts[v["dtype"]])
                .reshape(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def f32(dt, a):
    return (a.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else a.astype(np.float32)


def rope_half(x, pos, theta):
    """Hugging Face Llama: dimension i rotates with i + d/2 (rotate_half)."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(d // 2) * 2.0 / d)
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def rope_adjacent(x, pos, theta):
    """GGML's normal RoPE (llama.cpp's Llama): dimensions 2i and 2i+1 rotate together."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(d // 2) * 2.0 / d)
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    return out


@pytest.fixture(scope="module")
def gguf_mod():
    if not SRC:
        import gguf
        return gguf
    sys.path.insert(0, str(pathlib.Path(SRC) / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    return gguf


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_to_gguf_reads_back(tmp_path, gguf_mod, dtype):
    model = tmp_path / "m"
    subprocess.run([sys.executable, str(ROOT / "tools/gen_model.py"), "--shape", "tiny", "--dtype", dtype,
                    "--out", str(model)], check=True, capture_output=True)
    out = tmp_path / "m.gguf"
    subprocess.run([sys.executable, str(ROOT / "tools/to_gguf.py"), str(model), str(out)], check=True,
                   capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(pathlib.Path(SRC) / "gguf-py")} if SRC else None)
    cfg = json.loads((model / "config.json").read_text())
    st = read_safetensors(model / "model.safetensors")
    r = gguf_mod.GGUFReader(str(out))

    def kv(key):
        return r.fields[key].contents()

    assert kv("general.architecture") == "llama"
    L, d, nh, nkv = (cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"))
    hd = d // nh
    assert nkv < nh  # the tiny shape has grouped KV heads: k_proj is permuted per KV head
    assert kv("llama.block_count") == L and kv("llama.embedding_length") == d
    assert kv("llama.attention.head_count") == nh and kv("llama.attention.head_count_kv") == nkv
    assert kv("llama.feed_forward_length") == cfg["intermediate_size"]
    assert kv("llama.context_length") == cfg["max_position_embeddings"]
    assert kv("llama.rope.dimension_count") == hd
    assert kv("llama.rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert kv("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert kv("general.file_type") == {"f32": 0, "bf16": 32}[dtype]
    assert len(kv("tokenizer.ggml.tokens")) == cfg["vocab_size"]

    T = {t.name: t for t in r.tensors}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(L):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    assert cfg["tie_word_embeddings"] and set(T) == set(names.values())  # tied: no output.weight

    for hf, gg in names.items():
        dt, src = st[hf]
        t = T[gg]
        assert list(t.shape[::-1]) == list(src.shape), gg  # GGUF lists dimensions innermost first
        if src.ndim == 1:
            assert t.tensor_type.name == "F32", gg
            got = np.asarray(t.data).reshape(src.shape)
            assert np.array_equal(got.view(np.uint32), f32(dt, src).view(np.uint32)), gg
            continue
        assert t.tensor_type.name == dt, gg
        got = np.asarray(t.data).view("<u2" if dt == "BF16" else "<f4").reshape(src.shape)
        if "q_proj" not in hf and "k_proj" not in hf:
            assert np.array_equal(got, src), gg
            continue
        heads = nh if "q_proj" in hf else nkv
        # a permutation of rows within each head: the same rows, other places
        for h in range(heads):
            a, b = got[h * hd:(h + 1) * hd], src[h * hd:(h + 1) * hd]
            assert sorted(map(bytes, a)) == sorted(map(bytes, b)), gg
        st[hf] = (dt, src, got)

    # attention scores of layer 0 with both RoPE conventions, each on its own layout
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, d)).astype(np.float64)
    theta = cfg["rope_theta"]
    dt, wq, wq_g = st["model.layers.0.self_attn.q_proj.weight"]
    _, wk, wk_g = st["model.layers.0.self_attn.k_proj.weight"]
    wq, wq_g, wk, wk_g = (f32(dt, w).astype(np.float64) for w in (wq, wq_g, wk, wk_g))
    for pq, pk in ((0, 0), (5, 3), (37, 0), (200, 199)):
        q_hf = rope_half((x[0] @ wq.T).reshape(nh, hd), pq, theta)
        k_hf = rope_half((x[1] @ wk.T).reshape(nkv, hd), pk, theta)
        q_gg = rope_adjacent((x[0] @ wq_g.T).reshape(nh, hd), pq, theta)
        k_gg = rope_adjacent((x[1] @ wk_g.T).reshape(nkv, hd), pk, theta)
        grp = nh // nkv
        s_hf = [q_hf[h] @ k_hf[h // grp] for h in range(nh)]
        s_gg = [q_gg[h] @ k_gg[h // grp] for h in range(nh)]
        assert np.allclose(s_gg, s_hf, rtol=1e-9, atol=1e-9), (pq, pk)
        if pq != pk:  # a layout mismatch would show here (at equal positions RoPE cancels out)
            assert not np.allclose(
                [rope_adjacent((x[0] @ wq.T).reshape(nh, hd), pq, theta)[h] @
                 rope_adjacent((x[1] @ wk.T).reshape(nkv, hd), pk, theta)[h // grp] for h in range(nh)], s_hf)
