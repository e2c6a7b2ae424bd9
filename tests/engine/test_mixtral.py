"""Mixtral (MixtralForCausalLM) through `llmq generate`: the greedy ids of
transformers (tests/fixtures/hf/mixtral_*, tools/make_fixtures.py) with the
prompts batched and their prefill chunked, at tensor parallel 2 and 4 (CPU
ranks), and `llmq vram` counting the experts of Mixtral 8x7B.
(test_generate.py runs every fixture alone at TP 1; test_moe.c has the
logits.)"""
import json
import subprocess

import pytest

from llmqtest import BUILD, FIXTURES

LLMQ = str(BUILD / "llmq")


def generate(model, prompts, *extra):
    cmd = [LLMQ, "generate", "--model", str(model), "--json", "--temperature", "0", "--ignore-eos"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    r = subprocess.run(cmd + [str(x) for x in extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["output_ids"] for line in r.stdout.splitlines()]


@pytest.mark.parametrize("variant,tp", [("mixtral_moe", 1), ("mixtral_moe", 2), ("mixtral_window", 4)])
def test_greedy_batched_chunked_and_tensor_parallel(variant, tp):
    d = FIXTURES / "hf" / variant
    cases = json.loads((d / "expected.json").read_text())["cases"]
    # 9 tokens a step: the longer prompts prefill in chunks, next to the others' decodes
    outs = generate(d, [c["prompt_ids"] for c in cases], "--max-tokens", len(cases[0]["greedy"]),
                    "--max-batched-tokens", 9, "--tp", tp)
    assert outs == [c["greedy"] for c in cases]


def test_vram_counts_the_experts():
    r = subprocess.run([LLMQ, "vram", "--model", "mixtral-8x7b", "--gpu", "A10G", "--tp", "8", "--json",
                        "--max-batched-tokens", "8192", "--max-model-len", "32768"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["arch"] == "MixtralForCausalLM" and v["params"] == 46702792704
    # Mixtral 8x7B: d 4096, 32 layers, 8 experts of width 14336 (split 8 ways), 32 query and 8 KV heads
    # of 128, vocabulary 32000 (split), FP16.  Per rank: attention q,o 4096x512, k,v 4096x128; the
    # experts 8 x 3 x 4096 x 1792; the router 8 x 4096 whole; two norms; embedding and lm_head 4000 rows.
    d, L, rows = 4096, 32, 14336 // 8
    layer = 2 * (2 * d * 512 + 2 * d * 128 + 8 * 3 * d * rows + 8 * d) + 2 * d * 4
    assert v["weight_bytes_per_gpu"] == L * layer + 2 * 2 * 4000 * d + d * 4
