#!/usr/bin/env python3
"""Build the Hugging Face `transformers` golden fixtures of the engine tests.

For every supported variant this script builds a tiny random model with
transformers itself, saves it with `save_pretrained` (the same files users
download), and records what transformers computes for a few prompts:

  tests/fixtures/hf/<variant>/config.json, generation_config.json,
      model.safetensors (or shards + index), expected.json

expected.json = {
  "variant", "dtype",
  "cases": [{"prompt_ids": [...],
             "logits": [V floats]      next-token logits after prefill (fp32 compute),
             "logits_native": [...]    (bf16 variants) logits computed in bf16 by transformers,
             "greedy": [ids]           greedy continuation (fp32 compute),
             "min_gap": float,         smallest top1-top2 logit gap along the greedy path
             "min_router_gap": float}] (MoE) smallest gap between the k-th and the
                                       (k+1)-th router probability of any token, any layer
}

The fixtures are committed; CI never needs torch.  Run it with an
environment that has torch + transformers (`make fixtures`).
"""
import json
import os
import pathlib
import shutil
import sys

import torch
import transformers
from transformers import (FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
NEW_TOKENS = 12
VOCAB = 256

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
              rms_norm_eps=1e-5, initializer_range=0.15, bos_token_id=1, eos_token_id=2,
              attn_implementation="eager")

# Falcon takes its own keys (FalconConfig accepts no others).
FALCON_COMMON = dict(vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=96, num_hidden_layers=2,
                     num_attention_heads=8, max_position_embeddings=128, layer_norm_epsilon=1e-5,
                     initializer_range=0.15, bos_token_id=1, eos_token_id=2, alibi=False)

VARIANTS = {
    "llama_mha": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False), torch.float32, None),
    "llama_gqa_tied": (LlamaConfig, LlamaForCausalLM,
                       dict(num_key_value_heads=2, tie_word_embeddings=True), torch.float32, "120KB"),
    "llama_h8_kv1": (LlamaConfig, LlamaForCausalLM,
                     dict(num_attention_heads=8, num_key_value_heads=1, tie_word_embeddings=False),
                     torch.float32, None),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM,
                    dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=16)),
                    torch.float32, None),
    "llama_linear_rope": (LlamaConfig, LlamaForCausalLM,
                          dict(tie_word_embeddings=False, rope_scaling=dict(rope_type="linear", factor=2.0)),
                          torch.float32, None),
    "mistral_window": (MistralConfig, MistralForCausalLM,
                       dict(num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False),
                       torch.float32, None),
    # Mixtral: 4 experts, top 2, GQA; and with a sliding window and top 3 (summation order of > 2 experts)
    "mixtral_moe": (MixtralConfig, MixtralForCausalLM,
                    dict(num_key_value_heads=2, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                         sliding_window=None, tie_word_embeddings=False), torch.float32, None),
    "mixtral_window": (MixtralConfig, MixtralForCausalLM,
                       dict(num_key_value_heads=2, intermediate_size=16, num_local_experts=4, num_experts_per_tok=3,
                            sliding_window=8, tie_word_embeddings=False), torch.float32, None),
    "qwen2_bias": (Qwen2Config, Qwen2ForCausalLM,
                   dict(num_key_value_heads=2, tie_word_embeddings=False), torch.float32, None),
    "llama_gqa_bf16": (LlamaConfig, LlamaForCausalLM,
                       dict(num_key_value_heads=2, tie_word_embeddings=False), torch.bfloat16, None),
    # Falcon 40B/180B layout: new_decoder_architecture, grouped KV heads, ln_attn + ln_mlp, tied
    "falcon_new": (FalconConfig, FalconForCausalLM,
                   dict(new_decoder_architecture=True, num_kv_heads=2), torch.float32, None),
    # Falcon 7B layout: multi-query (one KV head), parallel attention, one LayerNorm, untied
    "falcon_mq": (FalconConfig, FalconForCausalLM,
                  dict(new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                       tie_word_embeddings=False), torch.float32, None),
    # the remaining RW layout: per-head interleaved q/k/v, sequential attention then MLP, biases
    "falcon_seq_bias": (FalconConfig, FalconForCausalLM,
                        dict(new_decoder_architecture=False, multi_query=False, parallel_attn=False, bias=True,
                             num_attention_heads=4), torch.float32, None),
}


def prompts_for(name, gen):
    lengths = [5, 17, 33] if not name.endswith("_window") else [5, 20, 40]
    return [[1] + torch.randint(3, VOCAB, (n - 1,), generator=gen).tolist() for n in lengths]


def greedy(model, ids):
    out, gaps = [], []
    cur = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(cur).logits[0, -1].float()
            top = torch.topk(logits, 2)
            gaps.append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            out.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    return out, min(gaps)


def router_gap(model, ids):
    """Smallest margin between the k-th and (k+1)-th router probability over
    every token and layer of one forward: a routing decision this close could
    flip under another summation order, so the fixture must keep clear of it."""
    k = model.config.num_experts_per_tok
    gaps = []

    def hook(_mod, _inp, out):
        logits = out[0] if isinstance(out, tuple) else out
        p = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values
        gaps.append(float((p[:, k - 1] - p[:, k]).min()))

    hs = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hs:
        h.remove()
    return min(gaps)


def build(name):
    cfg_cls, model_cls, extra, dtype, shard = VARIANTS[name]
    kw = dict(FALCON_COMMON if cfg_cls is FalconConfig else COMMON)
    kw.update(extra)
    cfg = cfg_cls(**kw)
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        # Make every parameter matter: random norms around 1, non-zero biases.
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "norm" in pname or ".ln_" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if dtype == torch.bfloat16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True, max_shard_size=shard or "50MB")
    # fp32 compute over exactly the saved weights (bf16 values upcast)
    ref = model_cls.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    native = None
    if dtype == torch.bfloat16:
        native = model_cls.from_pretrained(d, torch_dtype=torch.bfloat16, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for ids in prompts_for(name, gen):
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0, -1].float()
        case = {"prompt_ids": ids, "logits": [float(f"{x:.8g}") for x in logits.tolist()]}
        if native is not None:
            with torch.no_grad():
                nl = native(torch.tensor([ids])).logits[0, -1].float()
            case["logits_native"] = [float(f"{x:.6g}") for x in nl.tolist()]
        case["greedy"], case["min_gap"] = greedy(ref, ids)
        if getattr(cfg, "num_local_experts", 0):
            case["min_router_gap"] = router_gap(ref, ids + case["greedy"])
        cases.append(case)
    exp = {"variant": name, "dtype": str(dtype).replace("torch.", ""),
           "transformers": transformers.__version__, "torch": torch.__version__, "cases": cases}
    (d / "expected.json").write_text(json.dumps(exp) + "\n")
    gaps = [c["min_gap"] for c in cases]
    rgaps = [c["min_router_gap"] for c in cases if "min_router_gap" in c]
    print(f"{name}: {sorted(p.name for p in d.iterdir())} min greedy gap {min(gaps):.2e}" +
          (f" min router gap {min(rgaps):.2e}" if rgaps else ""))


def main():
    names = sys.argv[1:] or list(VARIANTS)
    for n in names:
        build(n)


if __name__ == "__main__":
    main()
