"""The CUDA backend end to end on the emulated device (`make cuda-emu`,
kernels/cuda/emu/): `llmq generate --backend cuda` from the emulated build,
against the independent references (llama2.c's for stories260K, Hugging Face
transformers' for the fixtures), the CPU backend, and itself (batched ==
alone, graphs == no graphs, TP 2 == TP 1).

Every run sets LLMQ_EMU_FATAL=1: a detector report (race, out-of-bounds,
uninitialised read, barrier) aborts the run, so it fails the test."""
import json
import os
import pathlib
import subprocess

import pytest

from llmqtest import BUILD, FIXTURES, ROOT

EMU = pathlib.Path(os.environ.get("LLMQ_EMU_BUILD") or ROOT / "build-emu")
EMU_LLMQ = EMU / "llmq"
CPU_LLMQ = BUILD / "llmq"

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("SANITIZER")),
                       reason="emulated end-to-end runs belong to the plain make test (minutes under a sanitizer)"),
    pytest.mark.skipif(not EMU_LLMQ.exists(), reason=f"{EMU_LLMQ} not built (make cuda-emu)"),
]

BASE_ENV = {"LLMQ_EMU_FATAL": "1", "LLMQ_EMU_MEM_MB": "1024", "LLMQ_CUDA_DTYPE": "f32"}


def generate(model, prompts, *extra, backend="cuda", env=None, binary=None, check=True):
    binary = binary or (EMU_LLMQ if backend == "cuda" else CPU_LLMQ)
    cmd = [str(binary), "generate", "--model", str(model), "--json", "--backend", backend]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    cmd += [str(x) for x in extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **BASE_ENV, **(env or {})})
    if not check:
        return r
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()], r.stderr


def ids(outs):
    return [o["output_ids"] for o in outs]


def stories(shared_dir):
    model = shared_dir / "models" / "stories260K"
    refs = [json.loads(line) for line in (model / "reference_greedy.jsonl").read_text().splitlines()]
    return model, refs


def test_says_it_is_emulated(shared_dir):
    model, refs = stories(shared_dir)
    _, err = generate(model, [refs[0]["prompt_ids"]], "--max-tokens", 2, "--temperature", 0)
    assert "emulated" in err.lower(), err


def test_stories_greedy_equals_reference(shared_dir):
    model, refs = stories(shared_dir)
    outs, _ = generate(model, [r["prompt_ids"] for r in refs], "--max-tokens", 48, "--temperature", 0,
                       "--max-batched-tokens", 24)  # chunked prefill of the longer prompts
    assert ids(outs) == [r["output_ids"] for r in refs]
    for r in refs[:2]:
        (alone,), _ = generate(model, [r["prompt_ids"]], "--max-tokens", 48, "--temperature", 0)
        assert alone["output_ids"] == r["output_ids"], r["prompt"]


@pytest.mark.parametrize("dtype,device", [("f16", "t4"), ("bf16", "a10g")])
def test_stories_16bit_batched_equals_alone(shared_dir, dtype, device):
    model, refs = stories(shared_dir)
    env = {"LLMQ_CUDA_DTYPE": dtype, "LLMQ_EMU_DEVICE": device}
    batch, _ = generate(model, [r["prompt_ids"] for r in refs[:4]], "--max-tokens", 32, "--temperature", 0,
                        "--max-batched-tokens", 24, env=env)
    for r, b in zip(refs[:4], batch):
        (alone,), _ = generate(model, [r["prompt_ids"]], "--max-tokens", 32, "--temperature", 0, env=env)
        assert alone["output_ids"] == b["output_ids"], (dtype, r["prompt"])


def test_bf16_refused_on_t4(shared_dir):
    model, refs = stories(shared_dir)
    r = generate(model, [refs[0]["prompt_ids"]], "--max-tokens", 2, check=False,
                 env={"LLMQ_CUDA_DTYPE": "bf16", "LLMQ_EMU_DEVICE": "t4"})
    assert r.returncode != 0
    assert "sm_80" in r.stderr, r.stderr


def test_step_graphs_equal_kernels_one_by_one(shared_dir):
    model, refs = stories(shared_dir)
    prompts = [r["prompt_ids"] for r in refs]
    graphs, err = generate(model, prompts, "--max-tokens", 24, "--temperature", 0, env={"LLMQ_LOG": "debug"})
    assert "recorded step graph" in err
    eager, _ = generate(model, prompts, "--max-tokens", 24, "--temperature", 0, env={"LLMQ_CUDA_GRAPHS": "0"})
    assert ids(graphs) == ids(eager)
    assert ids(graphs) == [r["output_ids"][:24] for r in refs]


def test_tp2_equals_tp1(shared_dir):
    model, refs = stories(shared_dir)
    prompts = [r["prompt_ids"] for r in refs[:4]]
    tp2, _ = generate(model, prompts, "--max-tokens", 24, "--temperature", 0, "--tp", 2)
    assert ids(tp2) == [r["output_ids"][:24] for r in refs[:4]]


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_against_cpu(shared_dir, quant):
    model, refs = stories(shared_dir)
    prompts = [r["prompt_ids"] for r in refs]
    args = ("--max-tokens", 48, "--temperature", 0, "--quantization", quant, "--max-batched-tokens", 24)
    gpu, _ = generate(model, prompts, *args)
    cpu, _ = generate(model, prompts, *args, backend="cpu")
    (alone,), _ = generate(model, [prompts[5]], "--max-tokens", 48, "--temperature", 0, "--quantization", quant)
    assert alone["output_ids"] == gpu[5]["output_ids"]
    same = sum(a == b for a, b in zip(ids(gpu), ids(cpu)))
    assert same >= 7, f"{quant}: {same}/8 prompts equal the CPU's ids"


@pytest.mark.parametrize("variant", sorted(p.name for p in (FIXTURES / "hf").iterdir()))
def test_transformers_greedy(variant):
    d = FIXTURES / "hf" / variant
    exp = json.loads((d / "expected.json").read_text())
    cases = exp["cases"]
    outs, _ = generate(d, [c["prompt_ids"] for c in cases], "--max-tokens", len(cases[0]["greedy"]),
                       "--temperature", 0, "--ignore-eos")
    for o, c in zip(outs, cases):
        assert o["output_ids"] == c["greedy"], (variant, c["prompt_ids"])
