#!/usr/bin/env python3
"""Write a Llama safetensors checkpoint (F32 or BF16, one file, the random
models of tools/gen_model.py) in llama2.c's checkpoint layout, plus a
tokenizer.bin it accepts, for the anchor benchmark (tools/anchor_llama2c.sh).

llama2.c's run.c reads (memory_map_weights): a header of 7 int32 (dim,
hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, negative when the
classifier is not tied to the embedding, seq_len), then F32 arrays: the
embedding, every layer's attention rmsnorm, every wq, wk, wv, wo, every
ffn rmsnorm, every w1 (gate), w2 (down), w3 (up), the final rmsnorm, two
unused RoPE tables of seq_len * head_size / 2 floats, and the classifier
when untied.  Matrices are [out, in] row-major, as in the checkpoint.

RoPE: HF checkpoints rotate the two halves of a head (rotate_half), run.c
rotates adjacent pairs, so wq and wk rows are permuted back to the
interleaved order (the inverse of HF's convert_llama_weights_to_hf
permute): both programs then compute the same function and their greedy
tokens agree until float rounding sends them apart.  The arithmetic cost is
the same either way.

The tokenizer: every id's piece is "<tN>" (score 0), so run.c's output
reads back as ids; the anchor prompts with BOS alone (an empty -i), which
needs no text encoding.  Only numpy is used.
"""
import argparse
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[base + a:base + b]
        if t["dtype"] == "F32":
            arr = raw.view(np.float32)
        elif t["dtype"] == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"to_llama2c: {name}: dtype {t['dtype']} (F32 or BF16 only)")
        tensors[name] = arr.reshape(t["shape"])
    return tensors


def unpermute(w, n_heads):
    """HF rotate-half row order -> interleaved pairs (llama2.c, Meta)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder with config.json and model.safetensors")
    ap.add_argument("--out", required=True, help="llama2.c checkpoint to write")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.bin to write")
    a = ap.parse_args()
    cfg = json.load(open(f"{a.model}/config.json"))
    t = read_safetensors(f"{a.model}/model.safetensors")
    dim, hidden, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    vocab, seq_len = cfg["vocab_size"], cfg["max_position_embeddings"]
    head = dim // n_heads
    if cfg.get("rope_theta", 10000.0) != 10000.0 or abs(cfg.get("rms_norm_eps", 1e-5) - 1e-5) > 1e-12:
        sys.exit("to_llama2c: run.c hard-codes rope_theta 10000 and rms_norm_eps 1e-5")
    tied = "lm_head.weight" not in t
    L = [f"model.layers.{i}." for i in range(n_layers)]

    with open(a.out, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, n_layers, n_heads, n_kv, vocab if tied else -vocab, seq_len))

        def put(arr):
            f.write(np.ascontiguousarray(arr, dtype=np.float32).tobytes())

        put(t["model.embed_tokens.weight"])
        for p in L:
            put(t[p + "input_layernorm.weight"])
        for p in L:
            put(unpermute(t[p + "self_attn.q_proj.weight"], n_heads))
        for p in L:
            put(unpermute(t[p + "self_attn.k_proj.weight"], n_kv))
        for p in L:
            put(t[p + "self_attn.v_proj.weight"])
        for p in L:
            put(t[p + "self_attn.o_proj.weight"])
        for p in L:
            put(t[p + "post_attention_layernorm.weight"])
        for p in L:
            put(t[p + "mlp.gate_proj.weight"])
        for p in L:
            put(t[p + "mlp.down_proj.weight"])
        for p in L:
            put(t[p + "mlp.up_proj.weight"])
        put(t["model.norm.weight"])
        put(np.zeros(seq_len * head, dtype=np.float32))  # the two unused RoPE tables
        if not tied:
            put(t["lm_head.weight"])

    pieces = [f"<t{i}>".encode() for i in range(vocab)]
    with open(a.tokenizer, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p in pieces:
            f.write(struct.pack("<fi", 0.0, len(p)) + p)


if __name__ == "__main__":
    main()
