"""`llmq bench` on a mixture of experts (tests/fixtures/hf/mixtral_moe): a
decode step reads the router and only the experts its tokens chose, so the
bytes per step and the roofline count top_k of E experts for one sequence
and at most min(E, top_k x B) for B sequences; the bench also runs on a
model whose context is shorter than its 512-token prefill.  --read-bw
skips the bandwidth measurement (16 passes over 1 GiB) to keep this fast."""
import json
import os
import subprocess

import pytest

from llmqtest import BUILD, FIXTURES

# The fixture's config.json, in F32: d 64, MLP width 32, 2 layers, 4 query heads and
# 2 KV heads of 16, 4 experts with top 2, vocabulary 256 (embedding not tied), context 128.
D, I, L, E, K, V = 64, 32, 2, 4, 2, 256


def bench(*extra):
    r = subprocess.run([str(BUILD / "llmq"), "bench", "--model", str(FIXTURES / "hf" / "mixtral_moe"),
                        "--steps", "4", "--json", "--read-bw", "10", *extra], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))  # no barrier stalls on a busy machine
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def f32_bytes(rows, cols):
    return rows * cols * 4


def int8_bytes(rows, cols):
    return rows * cols + rows * 4  # int8 values and one F32 scale a row


@pytest.mark.parametrize("quant,mat", [("none", f32_bytes), ("int8", int8_bytes)])
def test_decode_step_reads_only_the_chosen_experts(quant, mat):
    out = bench("--quantization", quant)
    attn = mat(D, D) + 2 * mat(2 * 16, D) + mat(D, D)      # q, k, v, o
    expert = 2 * mat(I, D) + mat(D, I)                     # w1, w3, w2
    router, norms = E * D * 4, 2 * D * 4                   # F32 as stored, never quantized
    lm_head, final_norm = mat(V, D), D * 4                 # the embedding is only looked up

    def step(experts):
        return L * (attn + router + norms + experts * expert) + lm_head + final_norm

    assert out["step_bytes_1"] == step(K)
    assert out["step_bytes_8"] == out["step_bytes_32"] == step(E)  # min(4, 2 x 8) = every expert
    assert out["read_bw_gbs"] == 10  # given, not measured
    assert out["read_bw_loop"] == "given"
    assert out["roofline_ratio"] == pytest.approx(out["decode_1_tok_s"] * step(K) / 10e9, abs=0.0006)
    assert out["prefill_tokens"] == 128  # the fixture's context, not 512


@pytest.mark.parametrize("quant,mat", [("none", f32_bytes), ("int8", int8_bytes)])
def test_weight_bytes_are_what_the_loader_holds(quant, mat):
    """weight_bytes is every weight as loaded: all E experts, and the embedding
    as stored (F32 here, looked up a row a token and never quantized) beside
    the lm_head, quantized or not; the memory estimator agrees.  (It printed
    the bytes of one decode step under that name, so that INT8 weights showed
    110 MB in --json and 159 MB on the text line for the 110M BF16 model.)"""
    out = bench("--quantization", quant)
    attn = mat(D, D) + 2 * mat(2 * 16, D) + mat(D, D)
    expert = 2 * mat(I, D) + mat(D, I)
    router, norms, embed = E * D * 4, 2 * D * 4, V * D * 4
    held = L * (attn + router + norms + E * expert) + mat(V, D) + D * 4 + embed
    assert out["embed_bytes"] == embed
    assert out["weight_bytes"] == held
    assert out["est_weight_bytes"] == held
