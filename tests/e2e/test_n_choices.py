"""`n` and `best_of` through the real llmq-gateway and llmq-worker on
stories260K, the official `openai` package as the client (issue 20).

Each choice is a job of its own (docs/architecture.md "n and best_of"):
choice 0 samples with the request's seed, choice i >= 1 with the i-th output
of SplitMix64 started at it (docs/protocol.md).  The seeds are computed here
from that description, so "choice i of n = 3" is checked against a separate
n = 1 request for that seed, and best_of's pick against the logprobs of the
choices returned by a plain n request.  One fleet for the module.
"""
import http.client
import json
import socket
import threading
import time

import openai
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, connect, job, wait_final

M64 = (1 << 64) - 1
PROMPT = "Lily and Ben"
EOS = {"ignore_eos": True}  # vLLM's extra parameter: every choice runs to max_tokens


def choice_seed(seed, i):
    """docs/protocol.md: choice 0 the seed, choice i the i-th SplitMix64 output from it (as int64)."""
    s = seed & M64
    if i:
        z = (s + i * 0x9E3779B97F4A7C15) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        s = z ^ (z >> 31)
    return s - (1 << 64) if s >= 1 << 63 else s


def job_ids(r):
    return {k.decode()[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}") if k.endswith(b"}")}


@pytest.fixture(scope="module")
def fleet(shared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("n_choices")
    srv = RedisServer(d, free_port()).start()
    w = gw = None
    try:
        w = Worker(shared_dir / "models" / "stories260K", srv.url, "stories", d / "w.log",
                   "--chat-template", "llama-2")
        gw = Gateway(srv.url, d / "gw.log")
        c = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield gw, connect(srv.url), c
    finally:
        if gw:
            gw.stop()
        if w:
            w.stop()
        srv.stop()


def streamed(it):
    """{index: (text, finish_reason)} and the usage of a completions or chat stream."""
    out, usage = {}, None
    for ch in it:
        usage = ch.usage or usage
        for c in ch.choices:
            text = c.text if hasattr(c, "text") else (c.delta.content or "")
            t, f = out.get(c.index, ("", None))
            out[c.index] = (t + text, c.finish_reason or f)
    return out, usage


def test_choices_are_their_seeds_and_stream_alike(fleet):
    gw, _, c = fleet
    body = dict(model="stories", prompt=PROMPT, max_tokens=12, extra_body=EOS, temperature=1.5, seed=-5)
    many = c.completions.create(n=3, **body)
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    texts = [ch.text for ch in many.choices]
    assert len(set(texts)) == 3, texts  # each its own stream
    ones = [c.completions.create(**dict(body, seed=choice_seed(-5, i))) for i in range(3)]
    assert texts == [o.choices[0].text for o in ones]
    assert c.completions.create(n=3, **body).choices == many.choices  # deterministic per seed
    # usage: the prompt once, the completions summed
    assert many.usage.prompt_tokens == ones[0].usage.prompt_tokens
    assert many.usage.completion_tokens == 3 * 12 == sum(o.usage.completion_tokens for o in ones)
    assert many.usage.total_tokens == many.usage.prompt_tokens + 36
    # streamed: the same choices by index, usage once at the end
    out, usage = streamed(c.completions.create(n=3, stream=True, stream_options={"include_usage": True}, **body))
    assert out == {i: (t, "length") for i, t in enumerate(texts)}
    assert usage.prompt_tokens == many.usage.prompt_tokens and usage.completion_tokens == 36
    # temperature 0: every choice the greedy one
    greedy = c.completions.create(**dict(body, n=3, temperature=0))
    assert len({ch.text for ch in greedy.choices}) == 1


def test_unseeded_choices_differ(fleet):
    _, _, c = fleet
    r = c.completions.create(model="stories", prompt=PROMPT, max_tokens=16, extra_body=EOS, temperature=1.5, n=3)
    assert len({ch.text for ch in r.choices}) == 3


def test_chat_n(fleet):
    _, _, c = fleet
    body = dict(model="stories", messages=[{"role": "user", "content": "Tell a story"}], max_tokens=10,
                temperature=1.5, seed=77, n=2)
    r = c.chat.completions.create(**body)
    assert [ch.index for ch in r.choices] == [0, 1]
    msgs = [ch.message.content for ch in r.choices]
    assert msgs[0] != msgs[1]
    one = c.chat.completions.create(**dict(body, n=1, seed=choice_seed(77, 1)))
    assert one.choices[0].message.content == msgs[1]
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    out, _ = streamed(c.chat.completions.create(stream=True, **body))
    assert {i: t for i, (t, _) in out.items()} == dict(enumerate(msgs))


def test_best_of_returns_the_highest_cumulative_logprob(fleet):
    _, _, c = fleet
    body = dict(model="stories", prompt=PROMPT, max_tokens=8, extra_body=EOS, temperature=1.5, seed=2026)
    # the same 4 choices with their logprobs: the test ranks them itself
    four = c.completions.create(n=4, logprobs=0, **body)
    cum = [sum(ch.logprobs.token_logprobs) for ch in four.choices]
    assert len(set(cum)) == 4, cum
    ranked = [four.choices[i].text for i in sorted(range(4), key=lambda i: -cum[i])]
    best = c.completions.create(n=2, best_of=4, **body)
    assert [ch.index for ch in best.choices] == [0, 1]
    assert [ch.text for ch in best.choices] == ranked[:2]
    assert best.choices[0].logprobs is None  # not asked for: not returned
    assert best.usage.completion_tokens == 4 * 8  # every choice generated counts
    withlp = c.completions.create(n=1, best_of=4, logprobs=0, **body)
    assert withlp.choices[0].text == ranked[0]
    assert sum(withlp.choices[0].logprobs.token_logprobs) == pytest.approx(max(cum))


@pytest.mark.parametrize("path,extra,param", [
    ("completions", {"n": 0}, "n"),
    ("completions", {"n": 17}, "n"),
    ("completions", {"best_of": 17}, "best_of"),
    ("completions", {"n": 3, "best_of": 2}, "best_of"),
    ("completions", {"n": 1, "best_of": 2, "stream": True}, "best_of"),
    ("chat/completions", {"best_of": 2}, "best_of"),
    ("jobs", {"n": 2}, "n"),
])
def test_bounds_are_400s_naming_the_param(fleet, path, extra, param):
    gw, _, _ = fleet
    body = dict(model="stories", max_tokens=2, **extra)
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path.startswith("chat") else {"prompt": "hi"})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", f"/v1/{path}", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    err = json.loads(resp.read())["error"]
    assert resp.status == 400 and err["param"] == param, err


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_every_choice(fleet, stream):
    gw, r, _ = fleet
    before = job_ids(r)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps(dict(model="stories", prompt=PROMPT, max_tokens=400, ignore_eos=True, n=3,
                                      stream=stream)))
    deadline, jids = time.time() + 30, []
    while time.time() < deadline:  # hang up once every choice generates
        jids = sorted(job_ids(r) - before)
        if len(jids) == 3 and all(r.xlen(f"llmq:job:{{{j}}}:out") > 0 for j in jids):
            break
        time.sleep(0.005)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert len(jids) == 3
    wait_final(r, jids, timeout=60)
    hashes = [job(r, j) for j in jids]
    assert [h["state"] for h in hashes] == ["cancelled"] * 3, hashes


def test_a_refused_choice_cancels_those_submitted(fleet, tmp_path):
    """--max-queue 2 on a model no worker serves: choices 0 and 1 are queued,
    choice 2 is refused (429), and the whole request with it."""
    _, r, _ = fleet
    url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}"
    gw2 = Gateway(url, tmp_path / "gw2.log", "--models", "idle", "--max-queue", 2)
    try:
        before = job_ids(r)
        c = openai.OpenAI(base_url=gw2.base + "/v1", api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model="idle", prompt=PROMPT, max_tokens=2, n=3)
        jids = sorted(job_ids(r) - before)
        assert len(jids) == 2
        wait_final(r, jids, timeout=10)
        assert [job(r, j)["state"] for j in jids] == ["cancelled"] * 2
    finally:
        gw2.stop()
