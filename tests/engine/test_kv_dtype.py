"""The KV cache's element type (--kv-dtype auto|f32|f16|bf16, be->kv_dt):
stories260K's greedy outputs still match llama2.c's (an independent
implementation, ../shared/models/stories260K) with the cache in F32, F16 and
BF16, on every ISA path this processor runs (LLMQ_CPU_ISA) and on the
reference backend; within one path a 16-bit cache changes nothing batching,
chunked prefill, preemption and prefix caching may do (every logits row's
bits, --logits-digest); auto follows the checkpoint's type; the estimator
and the worker count 16-bit blocks at half the bytes; bad names are refused."""
import json
import os
import pathlib
import re
import subprocess

import pytest

from llmqtest import BUILD, FIXTURES, ROOT, free_port

LLMQ = str(BUILD / "llmq")
WORKER = str(BUILD / "llmq-worker")
ISAS = ["generic", "avx2", "avx512", "avx512bf16"]


def run(model, prompts, *extra, env=None, check=True):
    cmd = [LLMQ, "generate", "--model", str(model), "--json", "--logits-digest"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    cmd += [str(x) for x in extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    if not check:
        return r
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def stories(shared_dir):
    model = shared_dir / "models" / "stories260K"
    refs = [json.loads(line) for line in (model / "reference_greedy.jsonl").read_text().splitlines()]
    return model, refs


def supported(isa):
    r = subprocess.run([LLMQ, "generate", "--model", str(FIXTURES / "hf" / "llama_mha"), "--prompt-ids", "1",
                        "--max-tokens", "1"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LLMQ_CPU_ISA": isa})
    return r.returncode == 0


@pytest.mark.parametrize("kv", ["f32", "f16", "bf16"])
def test_stories_greedy_matches_llama2c(shared_dir, kv):
    """All 8 prompts, 48 tokens each, batched with chunked prefill (24-token
    steps), on every path; the reference backend too."""
    model, refs = stories(shared_dir)
    prompts = [r["prompt_ids"] for r in refs]
    want = [r["output_ids"] for r in refs]
    ran = 0
    for isa in ISAS:
        if not supported(isa):
            continue
        outs = run(model, prompts, "--max-tokens", 48, "--temperature", 0, "--kv-dtype", kv,
                   "--max-batched-tokens", 24, env={"LLMQ_CPU_ISA": isa})
        assert [o["output_ids"] for o in outs] == want, (isa, kv)
        ran += 1
    assert ran >= 1
    outs = run(model, prompts[:3], "--max-tokens", 48, "--temperature", 0, "--kv-dtype", kv, "--backend", "cpu-ref")
    assert [o["output_ids"] for o in outs] == want[:3], kv


@pytest.mark.parametrize("kv", ["f16", "bf16"])
def test_16bit_cache_is_invariant(shared_dir, kv):
    """One path, a 16-bit cache: each prompt alone, all in one batch, in
    chunks of 24 tokens, preempted in a 10-block pool, and with prefix
    caching off: the same tokens and the same bits of every logits row."""
    model, refs = stories(shared_dir)
    prompts = [r["prompt_ids"] for r in refs]
    # a shared 40-token prefix, so that prefix caching has blocks to reuse
    prompts += [prompts[0] * 8 + prompts[1], prompts[0] * 8 + prompts[2]]
    args = ("--max-tokens", 40, "--temperature", 0.8, "--seed", 7, "--kv-dtype", kv)
    alone = [run(model, [p], *args)[0] for p in prompts]
    runs = {
        "batch": run(model, prompts, *args),
        "chunked": run(model, prompts, *args, "--max-batched-tokens", 24),
        "preempted": run(model, prompts, *args, "--kv-blocks", 10),
        # one sequence at a time: the later prompts find the earlier ones' blocks
        "prefix cached": run(model, prompts, *args, "--max-num-seqs", 1),
        "no prefix caching": run(model, prompts, *args, "--max-num-seqs", 1, "--no-prefix-caching"),
    }
    assert sum(o["preemptions"] for o in runs["preempted"]) > 0
    assert runs["prefix cached"][-1]["cached_tokens"] == 32
    assert all(o["cached_tokens"] == 0 for o in runs["no prefix caching"])
    for name, outs in runs.items():
        for a, b in zip(alone, outs):
            assert (a["output_ids"], a["logits_digest"]) == (b["output_ids"], b["logits_digest"]), (name, kv)
    # and the cache type is really in use: 16 bits round other logits than F32
    f32 = run(model, prompts[:1], *args[:-1], "f32")
    assert f32[0]["logits_digest"] != alone[0]["logits_digest"]


def test_auto_follows_the_checkpoint(shared_dir):
    """auto: F32 for the F32 stories260K, BF16 for a BF16 checkpoint (the
    same logits bits as asking for it)."""
    model, refs = stories(shared_dir)
    p = [refs[0]["prompt_ids"]]
    args = ("--max-tokens", 8, "--temperature", 0)
    assert run(model, p, *args)[0]["logits_digest"] == run(model, p, *args, "--kv-dtype", "f32")[0]["logits_digest"]
    bf = FIXTURES / "hf" / "llama_gqa_bf16"
    auto = run(bf, [[1, 5, 9, 2]], *args)[0]["logits_digest"]
    assert auto == run(bf, [[1, 5, 9, 2]], *args, "--kv-dtype", "bf16")[0]["logits_digest"]
    assert auto != run(bf, [[1, 5, 9, 2]], *args, "--kv-dtype", "f32")[0]["logits_digest"]


def worker_log(model, *flags):
    """llmq-worker against a closed port: it loads, sizes and logs its KV
    pool, then fails to reach Redis."""
    r = subprocess.run([WORKER, "--model", str(model), "--model-name", "m", "--redis",
                        f"redis://127.0.0.1:{free_port()}/0", *map(str, flags)],
                       capture_output=True, text=True, timeout=120)
    return r


def test_worker_counts_16bit_blocks(shared_dir):
    """--memory-utilization: the estimator sizes the pool with the cache's
    real bytes per token, so a 16-bit cache gets twice the blocks of an F32
    one (less the rounding), and the log names the type."""
    model, _ = stories(shared_dir)
    blocks, per_token = {}, {}
    for kv in ("f32", "f16", "bf16"):
        r = worker_log(model, "--memory-utilization", "0.01", "--kv-dtype", kv)
        m = re.search(r"KV cache (\d+) blocks of (\w+) ", r.stderr)
        assert m, r.stderr
        est = re.search(r"KV ([\d.]+) KiB/token -> (\d+) blocks", r.stderr)
        assert est and int(est.group(2)) == int(m.group(1)), r.stderr
        assert m.group(2) == kv.upper()
        blocks[kv], per_token[kv] = int(m.group(1)), float(est.group(1))
    # stories260K: 5 layers x 4 KV heads x 8 x (K, V) = 320 elements a token
    assert per_token == pytest.approx({"f32": 1.25, "f16": 0.625, "bf16": 0.625}, abs=0.06)  # logged as %.1f
    assert blocks["f16"] == blocks["bf16"]
    assert 1.9 < blocks["f16"] / blocks["f32"] <= 2.0
    # llmq vram --gpu cpu predicts the worker's auto choice (F32 here)
    r = subprocess.run([LLMQ, "vram", "--model", str(model), "--gpu", "cpu", "--memory-utilization", "0.01",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["kv_dtype"] == "F32" and est["kv_blocks"] == blocks["f32"]


def test_bad_names_are_refused(shared_dir):
    model, refs = stories(shared_dir)
    r = run(model, [refs[0]["prompt_ids"]], "--kv-dtype", "f8", check=False)
    assert r.returncode != 0 and "--kv-dtype 'f8'" in r.stderr
    r = worker_log(model, "--kv-dtype", "int8")
    assert r.returncode == 2 and "--kv-dtype 'int8'" in r.stderr
    r = subprocess.run([LLMQ, "bench", "--model", str(model), "--kv-dtype", "fp16", "--steps", "1", "--read-bw", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--kv-dtype 'fp16'" in r.stderr


def test_cuda_keeps_its_activation_type():
    """The CUDA backend (on the emulated device when built: make cuda-emu)
    takes auto and its activation type, and refuses any other by name."""
    emu = pathlib.Path(os.environ.get("LLMQ_EMU_BUILD") or ROOT / "build-emu") / "llmq"
    if not emu.exists():
        pytest.skip(f"{emu} not built (make cuda-emu)")
    d = FIXTURES / "hf" / "llama_mha"
    base = [str(emu), "generate", "--model", str(d), "--backend", "cuda", "--prompt-ids", "1,2", "--max-tokens", "2"]
    r = subprocess.run(base + ["--kv-dtype", "auto"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    act = re.search(r"activations (\w+)", r.stderr).group(1)
    other = "f32" if act != "F32" else "f16"
    r = subprocess.run(base + ["--kv-dtype", other], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"--kv-dtype {other}: this backend keeps its KV cache in its activation type " \
        f"({act})" in r.stderr
