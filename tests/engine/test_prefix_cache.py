"""Prefix caching (worker/engine/prefix_cache.c, sched.c): prompts that share
full 16-token blocks reuse their KV, and nothing else changes: every bit of
every logits row a token is sampled from (llmq generate --logits-digest) and
every token id are the same with the cache on and off, on the CPU backend at
TP 1 and TP 2 and on the emulated CUDA device; with chunked prefill,
admissions interleaved with running sequences, and preemption under a tiny
KV pool.  The cached token counts are checked against the block arithmetic
written out here, not taken from the scheduler."""
import json
import os
import pathlib
import random
import subprocess

import pytest

from llmqtest import BUILD, ROOT

LLMQ = str(BUILD / "llmq")
EMU = pathlib.Path(os.environ.get("LLMQ_EMU_BUILD") or ROOT / "build-emu")

_rng = random.Random(20)
PREFIX = [_rng.randrange(3, 512) for _ in range(70)]  # 4 full blocks + 6 tokens
PROMPTS = [
    PREFIX + [7, 8, 9],
    PREFIX + [10, 11],
    PREFIX,                                              # all of it but the last token's block
    PREFIX[:40] + [_rng.randrange(3, 512) for _ in range(30)],  # 2 blocks in common
    # the same blocks 2..4 after another first block: a chained hash must not match them
    [_rng.randrange(3, 512) for _ in range(16)] + PREFIX[16:70],
    PREFIX + list(range(20, 40)),
]


def generate(prompts, *extra, binary=LLMQ, env=None):
    model = pathlib.Path(os.environ["LLMQ_SHARED"]) / "models" / "stories260K"
    cmd = [str(binary), "generate", "--model", str(model), "--json", "--logits-digest"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    cmd += [str(x) for x in extra]
    # one thread: the same bits either way, and no OpenMP barrier stalls on a busy CI machine
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def expected_cached(prompts):
    """Run one at a time, prompt i finds the full blocks it shares with an
    earlier prompt, short of the block of its own last token."""
    out = []
    for i, p in enumerate(prompts):
        best = 0
        for q in prompts[:i]:
            n = 0
            while n < min(len(p), len(q)) and p[n] == q[n]:
                n += 1
            best = max(best, n // 16)
        out.append(16 * min(best, (len(p) - 1) // 16))
    return out


def same_bits(a, b):
    assert [o["output_ids"] for o in a] == [o["output_ids"] for o in b]
    assert [o["logits_digest"] for o in a] == [o["logits_digest"] for o in b]


SAMPLING = ("--max-tokens", 16, "--temperature", 0.8, "--seed", 11)


@pytest.fixture(scope="module")
def cpu_off(shared_dir):
    return generate(PROMPTS, *SAMPLING, "--no-prefix-caching")


def test_one_at_a_time_hits_what_the_blocks_share(cpu_off):
    outs = generate(PROMPTS, *SAMPLING, "--max-num-seqs", 1)
    assert [o["cached_tokens"] for o in outs] == expected_cached(PROMPTS) == [0, 64, 64, 32, 0, 64]
    assert all(o["cached_tokens"] == 0 for o in cpu_off)
    same_bits(outs, cpu_off)


def test_interleaved_chunked_and_preempted_change_no_bit(cpu_off):
    # two running at once, 24-token steps (chunked prefill; later prompts start while
    # earlier ones decode), 9 blocks of 16 for ~6 blocks per sequence: preemption
    outs = generate(PROMPTS, *SAMPLING, "--max-num-seqs", 2, "--max-batched-tokens", 24, "--kv-blocks", 9)
    assert sum(o["preemptions"] for o in outs) > 0
    assert sum(o["cached_tokens"] for o in outs) > 0
    same_bits(outs, cpu_off)


def test_tensor_parallel_2(shared_dir):
    args = (*SAMPLING, "--tp", 2, "--max-num-seqs", 2, "--max-batched-tokens", 24)
    on = generate(PROMPTS, *args)
    assert sum(o["cached_tokens"] for o in on) > 0
    same_bits(on, generate(PROMPTS, *args, "--no-prefix-caching"))


@pytest.mark.skipif(bool(os.environ.get("SANITIZER")), reason="emulated runs belong to the plain make test")
@pytest.mark.skipif(not (EMU / "llmq").exists(), reason=f"{EMU}/llmq not built (make cuda-emu)")
def test_emulated_cuda(shared_dir):
    env = {"LLMQ_EMU_FATAL": "1", "LLMQ_EMU_MEM_MB": "1024", "LLMQ_CUDA_DTYPE": "f32"}
    prompts = [PREFIX[:36] + [7, 8], PREFIX[:36] + [9]]  # short: the emulated device is slow
    args = ("--backend", "cuda", "--max-tokens", 3, "--temperature", 0, "--max-num-seqs", 1)
    on = generate(prompts, *args, binary=EMU / "llmq", env=env)
    assert [o["cached_tokens"] for o in on] == [0, 32]
    same_bits(on, generate(prompts, *args, "--no-prefix-caching", binary=EMU / "llmq", env=env))


def test_worker_usage_salt_and_metrics(tmp_path, shared_dir, monkeypatch):
    """llmq-worker: the final chunk's usage says cached_tokens (OpenAI's
    prompt_tokens_details.cached_tokens); a cache_salt keeps blocks apart;
    /metrics counts queries and hits in prompt tokens (vLLM's names)."""
    import http.client
    import sys
    import time
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from llmqtest import RedisServer, free_port
    import openai
    from worker_util import Gateway, Worker, chunks, connect, submit, wait_final

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker's; see generate()
    srv = RedisServer(tmp_path, free_port()).start()
    port = free_port()
    w = Worker(shared_dir / "models" / "stories260K", srv.url, "stories", tmp_path / "w.log",
               "--metrics-port", port, "--max-num-seqs", 1)
    try:
        r = connect(srv.url)
        jobs = [("a", PROMPTS[0], None), ("b", PROMPTS[1], None), ("c", PROMPTS[1], "tenant-2"),
                ("d", PROMPTS[0], "tenant-2"), ("e", PROMPTS[0], "tenant-3")]
        for jid, p, salt in jobs:  # one at a time: each finds what the ones before it left
            req = dict(prompt_ids=p, max_tokens=2, temperature=0)
            if salt:
                req["cache_salt"] = salt
            submit(r, jid, **req)
            wait_final(r, [jid])
        cached = [chunks(r, jid)[-1]["usage"].get("cached_tokens", 0) for jid, _, _ in jobs]
        assert cached == [0, 64, 0, 64, 0]
        queries, hits = sum(len(p) for _, p, _ in jobs), sum(cached)
        want = {"llmq:prefix_cache_queries_total": queries, "llmq:prefix_cache_hits_total": hits,
                "llmq:prompt_tokens_cached_total": hits, "llmq:prompt_tokens_computed_total": queries - hits}
        deadline, got = time.time() + 10, {}
        while time.time() < deadline:  # the worker renders its metrics every few hundred ms
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            got = {ln.split("{")[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.split("{")[0] in want}
            if got == want:
                break
            time.sleep(0.1)
        assert got == want
        # through the gateway: OpenAI's usage.prompt_tokens_details.cached_tokens, and cache_salt
        gw = Gateway(srv.url, tmp_path / "gw.log")
        try:
            client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=60)
            text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " * 2

            def cached(extra=None):
                u = client.completions.create(model="stories", prompt=text, max_tokens=2, temperature=0,
                                              extra_body=extra).usage
                return u.prompt_tokens, u.prompt_tokens_details.cached_tokens
            n, first = cached()
            n2, again = cached()
            assert n == n2 and n > 33
            assert (first, again) == (0, 16 * ((n - 1) // 16))
            assert cached({"cache_salt": "gw-tenant"})[1] == 0
            # the job API: the job record's usage (b found 64 tokens cached, a none)
            for jid, want in (("b", {"cached_tokens": 64}), ("a", None)):
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
                c.request("GET", f"/v1/jobs/{jid}")
                usage = json.loads(c.getresponse().read())["usage"]
                assert usage.get("prompt_tokens_details") == want, usage
        finally:
            gw.stop()
    finally:
        w.stop()
        srv.stop()
