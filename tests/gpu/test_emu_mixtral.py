"""Mixtral's experts (be_ops.moe, kernels/cuda/moe.cu) on the emulated CUDA
device: test_emu_generate.py checks the fixtures' greedy ids against
transformers (f32, step graphs on); here the same at TP 2 (NCCL all-reduce of
the experts' partial sums), and in bf16 a prompt's ids batched with others
(chunked prefill) equal its ids alone, with step graphs and without."""
import json
import os

import pytest

from llmqtest import FIXTURES
from test_emu_generate import EMU_LLMQ, generate, ids

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("SANITIZER")),
                       reason="emulated end-to-end runs belong to the plain make test (minutes under a sanitizer)"),
    pytest.mark.skipif(not EMU_LLMQ.exists(), reason=f"{EMU_LLMQ} not built (make cuda-emu)"),
]


def cases(variant):
    d = FIXTURES / "hf" / variant
    return d, json.loads((d / "expected.json").read_text())["cases"]


def test_tp2_equals_transformers():
    d, cs = cases("mixtral_moe")
    outs, _ = generate(d, [c["prompt_ids"] for c in cs], "--max-tokens", len(cs[0]["greedy"]),
                       "--temperature", 0, "--ignore-eos", "--tp", 2)
    assert ids(outs) == [c["greedy"] for c in cs]


def test_bf16_batched_equals_alone_with_and_without_graphs():
    d, cs = cases("mixtral_window")
    env = {"LLMQ_CUDA_DTYPE": "bf16", "LLMQ_EMU_DEVICE": "a10g"}
    args = ("--max-tokens", 8, "--temperature", 0, "--ignore-eos")
    batch, _ = generate(d, [c["prompt_ids"] for c in cs], *args, "--max-batched-tokens", 9, env=env)
    eager, _ = generate(d, [c["prompt_ids"] for c in cs], *args, env={**env, "LLMQ_CUDA_GRAPHS": "0"})
    assert ids(eager) == ids(batch)
    (alone,), _ = generate(d, [cs[2]["prompt_ids"]], *args, env=env)  # the longest: chunked in the batch
    assert alone["output_ids"] == batch[2]["output_ids"]
