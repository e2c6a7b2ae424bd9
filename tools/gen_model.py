#!/usr/bin/env python3
"""Write a random-weight model in the Hugging Face layout (config.json,
generation_config.json, model.safetensors) for demos and benchmarks.

    tools/gen_model.py --shape 110M --dtype bf16 --out /tmp/m110

Named shapes (Llama architecture):
  tiny     dim 64, 2 layers, 4 heads (2 KV), MLP 172, vocab 512, ctx 512
  110M     dim 768, 12 layers, 12 heads, MLP 2048, vocab 32000, ctx 1024 (tied)
  llama3-8b  dim 4096, 32 layers, 32 heads (8 KV), MLP 14336, vocab 128256
--layers N keeps a shape's layer shapes with N layers.
Only numpy is needed; the safetensors file is written directly (its format
is a little-endian u64 header length, a JSON header, then the raw data).
"""
import argparse
import json
import pathlib
import shutil

import numpy as np

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=172, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True),
    "110M": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                      tie_word_embeddings=False, rope_theta=500000.0),
}
DTYPES = {"f32": ("F32", "float32"), "bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16")}


def tensors(cfg):
    d, L, I, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (V, d)
    for i in range(L):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "mlp.gate_proj.weight", (I, d)
        yield p + "mlp.up_proj.weight", (I, d)
        yield p + "mlp.down_proj.weight", (d, I)
    yield "model.norm.weight", (d,)
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (V, d)


def encode(arr, dtype):
    if dtype == "f32":
        return arr.astype("<f4").tobytes()
    if dtype == "f16":
        return arr.astype("<f2").tobytes()
    u = arr.astype("<f4").view("<u4")
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even


CORPUS = [
    "Once upon a time there was a little dog who liked to run in the park.",
    "The sun was warm and the sky was blue, so the children played outside all day.",
    "She found a shiny red ball under the big old tree and took it home.",
    "def add(a, b):\n    return a + b\n", "1 2 3 4 5 6 7 8 9 10 100 1000",
]


def train_tokenizer(out, vocab_size):
    """A byte-level BPE trained with Hugging Face `tokenizers` on a small
    built-in corpus: ids 0-2 are <unk>, <s>, </s> like the model config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}) + "\n")


def tokenizer_size(path):
    t = json.loads(path.read_text())
    ids = list(t["model"]["vocab"].values()) + [x["id"] for x in t.get("added_tokens", [])]
    return max(ids) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="override the shape's number of layers (benchmarks extrapolate "
                    "from a few layers of a large shape: tests/gpu/bench.sh)")
    ap.add_argument("--tokenizer-from", help="copy tokenizer files from this model directory")
    ap.add_argument("--train-tokenizer", action="store_true",
                    help="train a byte-level BPE tokenizer with the model's vocabulary size (needs `tokenizers`)")
    a = ap.parse_args()

    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
               rope_theta=10000.0, bos_token_id=1, eos_token_id=2, torch_dtype=DTYPES[a.dtype][1])
    cfg.update(SHAPES[a.shape])
    if a.layers is not None:
        if a.layers < 1:
            ap.error("--layers must be at least 1")
        cfg["num_hidden_layers"] = a.layers
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.tokenizer_from:
        src = pathlib.Path(a.tokenizer_from)
        for fn in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / fn).exists():
                shutil.copy(src / fn, out / fn)
    if a.train_tokenizer:
        train_tokenizer(out, cfg["vocab_size"])
    # A tokenizer smaller than the shape's vocabulary (stories' 512 ids, or a
    # BPE trained on the small corpus) leaves ids that decode to nothing; like
    # the padding rows of a real model, their embedding rows are zero, so
    # their logit is 0 and a random model still emits text (the real ids'
    # logits spread around 0 and the largest is positive).
    n_text = tokenizer_size(out / "tokenizer.json") if (out / "tokenizer.json").exists() else None
    rng = np.random.default_rng(a.seed)
    names = list(tensors(cfg))
    esize = 4 if a.dtype == "f32" else 2
    header, off = {}, 0
    for name, shape in names:
        n = int(np.prod(shape)) * esize
        header[name] = dict(dtype=DTYPES[a.dtype][0], shape=list(shape), data_offsets=[off, off + n])
        off += n
    header["__metadata__"] = {"format": "pt", "generator": f"llmq tools/gen_model.py {a.shape}"}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for name, shape in names:
            if name.endswith("norm.weight"):
                arr = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
            else:
                arr = 0.02 * rng.standard_normal(shape, dtype=np.float32)
                if n_text is not None and name in ("model.embed_tokens.weight", "lm_head.weight"):
                    arr[n_text:] = 0.0
            f.write(encode(arr, a.dtype))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(dict(bos_token_id=1, eos_token_id=2)) + "\n")
    print(f"wrote {out}: {a.shape} {a.dtype}, {off / 1e6:.1f} MB of weights")


if __name__ == "__main__":
    main()
