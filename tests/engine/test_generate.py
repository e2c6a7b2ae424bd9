"""`llmq generate` end to end: greedy outputs against independent references
(llama2.c for stories260K, Hugging Face transformers for the fixtures),
batching and preemption that change nothing, seeded sampling that does not
depend on the batch, and clear errors for bad input."""
import functools
import json
import os
import pathlib
import subprocess
import time

import pytest

from llmqtest import BUILD, FIXTURES

LLMQ = str(BUILD / "llmq")


def generate(model, prompts, *extra, check=True, env=None):
    cmd = [LLMQ, "generate", "--model", str(model), "--json"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    cmd += [str(x) for x in extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **env) if env else None)
    if check:
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]
    return r


def stories_refs(shared_dir):
    path = shared_dir / "models" / "stories260K" / "reference_greedy.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stories_greedy_each_alone(shared_dir):
    refs = stories_refs(shared_dir)
    assert len(refs) == 8
    model = shared_dir / "models" / "stories260K"
    for ref in refs:
        (out,) = generate(model, [ref["prompt_ids"]], "--max-tokens", 48, "--temperature", 0)
        assert out["output_ids"] == ref["output_ids"], ref["prompt"]
        assert out["finish_reason"] == "length"
        assert out["completion_tokens"] == 48


def test_stories_greedy_batch_of_8(shared_dir):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    outs = generate(model, [r["prompt_ids"] for r in refs], "--max-tokens", 48, "--temperature", 0,
                    "--max-batched-tokens", 24)  # forces chunked prefill of the longer prompts
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]


def test_stories_preemption_recomputes_exactly(shared_dir):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    # 8 sequences of ~60 tokens need ~32 blocks; 10 blocks force preemption.
    outs = generate(model, [r["prompt_ids"] for r in refs], "--max-tokens", 48, "--temperature", 0,
                    "--kv-blocks", 10)
    assert sum(o["preemptions"] for o in outs) > 0
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]


@pytest.mark.parametrize("variant", sorted(p.name for p in (FIXTURES / "hf").iterdir()))
def test_transformers_greedy(variant):
    d = FIXTURES / "hf" / variant
    exp = json.loads((d / "expected.json").read_text())
    cases = exp["cases"]
    outs = generate(d, [c["prompt_ids"] for c in cases], "--max-tokens", len(cases[0]["greedy"]),
                    "--temperature", 0, "--ignore-eos")
    for o, c in zip(outs, cases):
        assert o["output_ids"] == c["greedy"], (variant, c["prompt_ids"])


def test_seeded_sampling_is_batch_invariant(shared_dir):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    args = ("--max-tokens", 40, "--temperature", 0.9, "--top-p", 0.95, "--seed", 1234)
    (alone,) = generate(model, [refs[3]["prompt_ids"]], *args)
    batch = generate(model, [r["prompt_ids"] for r in refs], *args, "--kv-blocks", 12)
    assert batch[3]["output_ids"] == alone["output_ids"]
    # and the draw really is random: another seed gives other tokens
    (other,) = generate(model, [refs[3]["prompt_ids"]], "--max-tokens", 40, "--temperature", 0.9,
                        "--top-p", 0.95, "--seed", 99)
    assert other["output_ids"] != alone["output_ids"]


# The CPU kernels' instruction-set paths (kernels/cpu/isa.h).  Each path must
# be batch invariant on its own; two paths may differ in the last bits.
CPU_ISAS = ["generic", "avx2", "avx512", "avx512bf16"]


@functools.lru_cache(maxsize=None)
def isa_supported(isa):
    """Whether this processor runs the path: the binary says so (a forced
    path it lacks is an error naming it)."""
    r = generate(FIXTURES / "hf" / "llama_mha", [[1, 2]], "--max-tokens", 1, check=False,
                 env={"LLMQ_CPU_ISA": isa})
    assert r.returncode == 0 or "does not support it" in r.stderr, r.stderr
    return r.returncode == 0


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("model", ["stories260K", "llama_gqa_bf16"])
def test_batch_invariance_per_isa(shared_dir, isa, model):
    """On every path this machine runs (F32 weights, and BF16 ones, which
    avx512bf16 multiplies with vdpbf16ps): each prompt's logits, every bit
    (--logits-digest), the same alone, in a batch with chunked prefill, and
    through preemption; seeded sampling draws the same tokens."""
    if not isa_supported(isa):
        pytest.skip(f"this processor does not run the {isa} path")
    env = {"LLMQ_CPU_ISA": isa}
    if model == "stories260K":
        d = shared_dir / "models" / model
        prompts = [r["prompt_ids"] for r in stories_refs(shared_dir)]
    else:
        d = FIXTURES / "hf" / model
        prompts = [c["prompt_ids"] for c in json.loads((d / "expected.json").read_text())["cases"]]
        prompts = (prompts * 4)[:8]
        prompts = [p + [3 + i, 5 + 2 * i] for i, p in enumerate(prompts)]  # distinct sequences
    args = ("--max-tokens", 24, "--temperature", 0.9, "--seed", 1234, "--logits-digest", "--ignore-eos")
    alone = [generate(d, [p], *args, env=env)[0] for p in prompts[:3]]
    batch = generate(d, prompts, *args, "--max-batched-tokens", 24, env=env)
    tight = generate(d, prompts, *args, "--kv-blocks", len(prompts) + 2, env=env)
    assert sum(o["preemptions"] for o in tight) > 0
    for runs in (batch, tight):
        assert [o["logits_digest"] for o in runs[:3]] == [o["logits_digest"] for o in alone]
        assert [o["output_ids"] for o in runs[:3]] == [o["output_ids"] for o in alone]
    assert [o["logits_digest"] for o in batch] == [o["logits_digest"] for o in tight]


def test_stop_token_and_eos(shared_dir):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    ref = refs[0]
    stop = ref["output_ids"][5]
    (out,) = generate(model, [ref["prompt_ids"]], "--max-tokens", 48, "--temperature", 0,
                      "--stop-token-id", stop)
    first = ref["output_ids"].index(stop)
    assert out["output_ids"] == ref["output_ids"][:first + 1]
    assert out["finish_reason"] == "stop"


def test_cli_errors(tmp_path):
    r = subprocess.run([LLMQ, "generate", "--prompt-ids", "1,2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--model" in r.stderr
    r = generate(tmp_path, [[1, 2]], check=False)
    assert r.returncode == 1 and "config.json" in r.stderr
    d = FIXTURES / "hf" / "llama_mha"
    r = generate(d, [[1] * 200], check=False)  # context is 128
    assert r.returncode == 1 and "context" in r.stderr
    r = generate(d, [[1, 999]], check=False)  # vocab is 256
    assert r.returncode == 1 and "vocabulary" in r.stderr
    r = subprocess.run([LLMQ, "generate", "--model", str(d), "--prompt-ids", "1,x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--prompt-ids" in r.stderr
    r = subprocess.run([LLMQ, "generate", "--model", str(d), "--prompt-ids", "1", "--backend", "cuda"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "make cuda" in r.stderr


@pytest.mark.parametrize("tp", [2, 4])
def test_stories_tensor_parallel(shared_dir, tp):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    outs = generate(model, [r["prompt_ids"] for r in refs], "--max-tokens", 48, "--temperature", 0, "--tp", tp)
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]


@pytest.mark.parametrize("variant,tp", [("llama_h8_kv1", 2), ("llama_h8_kv1", 4), ("llama_gqa_tied", 4),
                                        ("qwen2_bias", 2), ("mistral_window", 2), ("llama_gqa_bf16", 2),
                                        ("falcon_new", 2), ("falcon_new", 4), ("falcon_mq", 4),
                                        ("falcon_seq_bias", 2)])
def test_transformers_tensor_parallel(variant, tp):
    d = FIXTURES / "hf" / variant
    cases = json.loads((d / "expected.json").read_text())["cases"]
    outs = generate(d, [c["prompt_ids"] for c in cases], "--max-tokens", len(cases[0]["greedy"]),
                    "--temperature", 0, "--ignore-eos", "--tp", tp)
    assert [o["output_ids"] for o in outs] == [c["greedy"] for c in cases]


@pytest.mark.parametrize("model,tp", [("stories260K", 4), ("llama_h8_kv1", 2), ("llama_gqa_tied", 4)])
def test_tensor_parallel_over_tcp(shared_dir, model, tp):
    """The TCP communicator of groups started rank by rank (across hosts),
    here over loopback: the same ids as the references."""
    tcp = {"LLMQ_TP_TRANSPORT": "tcp"}
    if model == "stories260K":
        refs = stories_refs(shared_dir)
        outs = generate(shared_dir / "models" / model, [r["prompt_ids"] for r in refs], "--max-tokens", 48,
                        "--temperature", 0, "--tp", tp, env=tcp)
        assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
        return
    d = FIXTURES / "hf" / model
    cases = json.loads((d / "expected.json").read_text())["cases"]
    outs = generate(d, [c["prompt_ids"] for c in cases], "--max-tokens", len(cases[0]["greedy"]),
                    "--temperature", 0, "--ignore-eos", "--tp", tp, env=tcp)
    assert [o["output_ids"] for o in outs] == [c["greedy"] for c in cases]


def test_memory_utilization_needs_a_device_backend(shared_dir):
    """The CPU engine has no device memory to size its pool from: a clear
    error (llmq-worker sizes CPU pools with the estimator instead)."""
    model = shared_dir / "models" / "stories260K"
    r = generate(model, [[1, 2]], "--memory-utilization", 0.5, check=False)
    assert r.returncode == 1 and "cannot size the KV pool from its memory" in r.stderr
    r = generate(model, [[1, 2]], "--memory-utilization", 0.5, "--kv-blocks", 4, check=False)
    assert r.returncode != 0 and "memory-utilization" in r.stderr


def test_tensor_parallel_transport_must_be_known(shared_dir):
    r = generate(shared_dir / "models" / "stories260K", [[1, 2]], "--tp", 2, check=False,
                 env={"LLMQ_TP_TRANSPORT": "udp"})
    assert r.returncode == 1 and "LLMQ_TP_TRANSPORT is shm or tcp, not 'udp'" in r.stderr


def test_tensor_parallel_shapes_that_do_not_divide(shared_dir):
    r = generate(shared_dir / "models" / "stories260K", [[1, 2]], "--tp", 8, check=False)
    assert r.returncode == 1
    assert "intermediate_size 172 does not divide by 8" in r.stderr


def test_text_prompts_and_completion_text(shared_dir):
    refs = stories_refs(shared_dir)
    model = shared_dir / "models" / "stories260K"
    cmd = [LLMQ, "generate", "--model", str(model), "--json", "--max-tokens", "48", "--temperature", "0"]
    for r in refs:
        cmd += ["--prompt", r["prompt"]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    outs = [json.loads(line) for line in out.splitlines()]
    for o, r in zip(outs, refs):
        assert o["prompt_ids"] == r["prompt_ids"]
        assert o["output_ids"] == r["output_ids"]
        assert o["text"] == r["completion"]
    r = subprocess.run([LLMQ, "generate", "--model", str(FIXTURES / "hf" / "llama_mha"), "--prompt", "hi"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "tokenizer.json" in r.stderr


# proto_request_validate's messages (common/protocol.c), which the gateway
# answers a request with (400) and libllmq refuses a submit with: `llmq
# generate` checks its sampling options as the same request.
API_REFUSALS = [
    (("--temperature", 2.5), "temperature must be between 0 and 2"),
    (("--temperature", -0.1), "temperature must be between 0 and 2"),
    (("--top-p", 0), "top_p must be in (0, 1]"),
    (("--top-p", 1.5), "top_p must be in (0, 1]"),
    (("--top-k", -2), "top_k must be >= 0 (0 disables it)"),
    (("--min-p", 1.5), "min_p must be between 0 and 1"),
    (("--repetition-penalty", 0), "repetition_penalty must be in (0, 10]"),
    (("--repetition-penalty", 11), "repetition_penalty must be in (0, 10]"),
    (("--presence-penalty", -2.5), "presence_penalty must be between -2 and 2"),
    (("--frequency-penalty", 3), "frequency_penalty must be between -2 and 2"),
    (("--max-tokens", 0), "max_tokens must be at least 1"),
    (("--stop-token-id", -1), "stop_token_ids must be >= 0"),
]


@pytest.mark.parametrize("args,message", API_REFUSALS)
def test_generate_refuses_what_the_api_refuses(args, message):
    d = FIXTURES / "hf" / "llama_mha"
    r = generate(d, [[1, 2]], *args, check=False)
    assert r.returncode == 2 and r.stderr == f"llmq generate: {message}\n", r.stderr
    # just inside the bounds runs (the old check let temperature 2.5 through and capped nothing)
    ok = {"--temperature": 2, "--top-p": 1, "--top-k": 0, "--min-p": 1, "--repetition-penalty": 10,
          "--presence-penalty": -2, "--frequency-penalty": 2, "--max-tokens": 1, "--stop-token-id": 0}
    assert generate(d, [[1, 2]], args[0], ok[args[0]], "--seed", 1)


def test_generate_and_submit_give_the_same_refusal(redis_server):
    """The client library checks a request with the function the gateway
    uses before queuing it: `llmq submit` and `llmq generate` refuse the same
    temperatures with the same words (submit's other options it checks itself)."""
    for flag, value in (("--temperature", 3), ("--temperature", -1)):
        sub = subprocess.run([LLMQ, "submit", "--redis", redis_server.url, "--model", "m", "--prompt", "x",
                              flag, str(value)], capture_output=True, text=True, timeout=30)
        gen = generate(FIXTURES / "hf" / "llama_mha", [[1, 2]], flag, value, check=False)
        assert sub.returncode != 0 and gen.returncode == 2
        api = sub.stderr.strip().split(": ", 1)[1]
        assert gen.stderr.strip() == f"llmq generate: {api}"


def test_seedless_prompts_get_the_workers_seed(shared_dir):
    """Without --seed the seed is drawn as the worker draws a job's
    (sampler_seed_draw: wall-clock ms x 2^64/phi, xor a rand() below 2^31),
    reported in --json, and reproduces the run when given back."""
    model = shared_dir / "models" / "stories260K"
    prompt = stories_refs(shared_dir)[2]["prompt_ids"]
    t0 = int(time.time() * 1000)
    (out,) = generate(model, [prompt], "--max-tokens", 24, "--temperature", 1.0)
    t1 = int(time.time() * 1000)
    seed, golden = out["seed"], 0x9E3779B97F4A7C15
    assert any((seed ^ (ms * golden % 2**64)) < 2**31 for ms in range(t0 - 1, t1 + 2)), hex(seed)
    (again,) = generate(model, [prompt], "--max-tokens", 24, "--temperature", 1.0, "--seed", seed)
    assert again["output_ids"] == out["output_ids"] and again["seed"] == seed
