#!/usr/bin/env python3
"""Independent reference for weight-only quantization (kernels/quant.h):
quantize a Llama-family fixture's matrices the way llmq does (INT8 symmetric
per output row; INT4 asymmetric per group of 128 with a zero point), run the
forward pass in float64 numpy, and write the next-token logits of the
fixture's cases.  tests/unit/test_vram_quant.c compares llmq's quantized
models against these numbers.

    tools/quant_reference.py tests/fixtures/hf/llama_mha tests/fixtures/quant/llama_mha.json

Only numpy.  Rounding is half-to-even like nearbyintf; scales are rounded
to float32 as llmq stores them.  The embedding table stays unquantized;
lm_head (or the tied table used as lm_head) is quantized.
"""
import json
import struct
import sys

import numpy as np


def load(model_dir):
    raw = open(f"{model_dir}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    weights = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", "float32 fixtures only"
        a, b = t["data_offsets"]
        weights[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return weights


def f32(a):
    return a.astype(np.float32).astype(np.float64)


def int8(w):
    s = f32(np.abs(w).max(1, keepdims=True) / 127)
    safe = np.where(s > 0, s, 1)
    return np.clip(np.round(w / safe), -127, 127) * s


def int4(w, group=128):
    out = np.empty_like(w)
    for g0 in range(0, w.shape[1], group):
        b = w[:, g0:g0 + group]
        lo = np.minimum(b.min(1, keepdims=True), 0)
        hi = np.maximum(b.max(1, keepdims=True), 0)
        s = f32((hi - lo) / 15)
        safe = np.where(s > 0, s, 1)
        z = np.clip(np.round(-lo / safe), 0, 15)
        q = np.clip(np.round(b / safe) + z, 0, 15)
        out[:, g0:g0 + group] = (q - z) * s
    return out


def forward(w, cfg, ids, quant):
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):
        inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
        ang = np.concatenate([pos[:, None] * inv] * 2, -1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * np.cos(ang)[:, None] + rot * np.sin(ang)[:, None]

    x = w["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope((h @ quant(w[p + "self_attn.q_proj.weight"]).T).reshape(T, heads, hd))
        k = rope((h @ quant(w[p + "self_attn.k_proj.weight"]).T).reshape(T, kv, hd))
        v = (h @ quant(w[p + "self_attn.v_proj.weight"]).T).reshape(T, kv, hd)
        k, v = np.repeat(k, heads // kv, 1), np.repeat(v, heads // kv, 1)
        a = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(T, heads * hd) @ quant(w[p + "self_attn.o_proj.weight"]).T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g, u = h @ quant(w[p + "mlp.gate_proj.weight"]).T, h @ quant(w[p + "mlp.up_proj.weight"]).T
        x = x + (g / (1 + np.exp(-g)) * u) @ quant(w[p + "mlp.down_proj.weight"]).T
    h = rms(x[-1], w["model.norm.weight"])
    return h @ quant(w.get("lm_head.weight", w["model.embed_tokens.weight"])).T


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{model_dir}/config.json"))
    cases = json.load(open(f"{model_dir}/expected.json"))["cases"]
    w = load(model_dir)
    result = {"model": model_dir, "int4_group": 128, "cases": []}
    for c in cases:
        ids = c["prompt_ids"]
        result["cases"].append({"prompt_ids": ids,
                                "int8": [float(v) for v in forward(w, cfg, ids, int8)],
                                "int4": [float(v) for v in forward(w, cfg, ids, int4)]})
    with open(out, "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main()
