#!/usr/bin/env python3
"""Write a Llama-architecture model in the Hugging Face layout (config.json,
model.safetensors) as a GGUF file for llama.cpp, with llama.cpp's own
gguf-py (its writer and its tensor-name map):

    PYTHONPATH=$LLAMA_CPP_SRC/gguf-py tools/to_gguf.py MODEL_DIR OUT.gguf

(or with the gguf package from PyPI that `make deps` puts in .venv).

Used by tools/anchor_llamacpp.sh to run llama.cpp on the same weights as
llmq.  llama.cpp's convert_hf_to_gguf.py does the same but imports torch,
which llmq's environment does not have.

What the conversion does (as convert_hf_to_gguf.py does for Llama):
  - matrices keep the checkpoint's dtype (F32, BF16 or F16 bits copied as
    they are); 1-D tensors (the RMSNorm weights) are written as F32, which
    is exact and what llama.cpp expects of them;
  - q_proj and k_proj rows are permuted from Hugging Face's rotary layout
    (a head's dimension i paired with i + head_dim/2) to GGUF's (pairs of
    adjacent dimensions), per head: llama.cpp's Llama applies the "normal"
    RoPE to adjacent pairs;
  - a tied model (tie_word_embeddings) gets no output.weight: llama.cpp
    then uses token_embd.weight for the logits.
The vocabulary is a placeholder of vocab_size entries (SentencePiece type:
<unk>, <s>, </s>, the 256 byte tokens, then "t<id>"): llama-bench and
llama-batched-bench draw random token ids and the greedy check compares
ids, so no text is ever read.  Random-weight models have no real one.
"""
import argparse
import json
import pathlib
import struct
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("to_gguf.py: needs gguf-py: PYTHONPATH=$LLAMA_CPP_SRC/gguf-py, or the gguf package (make deps)")

ST_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2"), "F16": np.dtype("<f2")}


def read_safetensors(path):
    """name -> (safetensors dtype, numpy array mapped from the file)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in ST_DTYPES:
            raise SystemExit(f"to_gguf.py: {name}: dtype {t['dtype']} not supported (F32, BF16, F16)")
        lo, hi = t["data_offsets"]
        dt = ST_DTYPES[t["dtype"]]
        count = (hi - lo) // dt.itemsize
        arr = np.memmap(path, dtype=dt, mode="r", offset=base + lo, shape=(count,)).reshape(t["shape"])
        out[name] = (t["dtype"], arr)
    return out


def to_f32(st_dtype, arr):
    if st_dtype == "BF16":
        return (arr.astype("<u4") << 16).view("<f4")
    return arr.astype("<f4")


def permute_rope(w, n_head):
    """Rows of q_proj/k_proj (n_head * head_dim, dim) from Hugging Face's
    half-split rotary pairs to GGUF's adjacent pairs, head by head."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_tensors(model_dir):
    files = sorted(pathlib.Path(model_dir).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"to_gguf.py: no *.safetensors in {model_dir}")
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(f))
    return tensors


def convert(model_dir, out_path):
    model_dir = pathlib.Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise SystemExit(f"to_gguf.py: model_type {cfg.get('model_type')!r}: only llama (and mistral) are written")
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim", d // n_head)
    V = cfg["vocab_size"]
    tied = cfg.get("tie_word_embeddings", False)
    tensors = load_tensors(model_dir)
    if tied:
        tensors.pop("lm_head.weight", None)
    mats = {dt for name, (dt, arr) in tensors.items() if arr.ndim == 2}
    if len(mats) != 1:
        raise SystemExit(f"to_gguf.py: matrices of several dtypes {sorted(mats)}")
    (wdt,) = mats
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
             "F16": gguf.LlamaFileType.MOSTLY_F16}[wdt]

    w = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != d // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(V)
    w.add_file_type(ftype)

    # placeholder SentencePiece vocabulary (see the module's docstring)
    if V < 259:
        raise SystemExit(f"to_gguf.py: vocab_size {V} < 259 (3 special and 256 byte tokens)")
    T = gguf.TokenType
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [f"t{i}" for i in range(259, V)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256 + [T.NORMAL] * (V - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(259, V)])
    w.add_token_types(types)
    bos, eos = cfg.get("bos_token_id", 1), cfg.get("eos_token_id", 2)
    w.add_bos_token_id(bos if isinstance(bos, int) else 1)
    w.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)  # a list: its first
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, L)
    for name, (dt, arr) in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"to_gguf.py: no GGUF name for {name}")
        if name.endswith("q_proj.weight"):
            arr = permute_rope(arr, n_head)
        elif name.endswith("k_proj.weight"):
            arr = permute_rope(arr, n_kv)
        if arr.ndim == 1:
            w.add_tensor(new, to_f32(dt, arr))
        elif dt == "BF16":
            w.add_tensor(new, np.ascontiguousarray(arr), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(new, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return wdt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out")
    a = ap.parse_args()
    wdt = convert(a.model_dir, a.out)
    print(f"to_gguf.py: {a.model_dir} -> {a.out} ({wdt})")


if __name__ == "__main__":
    main()
