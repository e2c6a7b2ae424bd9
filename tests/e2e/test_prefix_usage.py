"""Prefix caching as the job record and /metrics report it (issue 20).

One fleet for the module: redis-server, one llmq-worker on stories260K (two
sequences at a time, a pool of 9 KV blocks of 16 tokens) and llmq-gateway.
  - The job hash keeps `cached_tokens` (the final write's script writes it),
    so GET /v1/jobs/{id} reports usage.prompt_tokens_details.cached_tokens
    even when the final chunk is gone from the output stream.
  - A sequence restarted after preemption looks the cache up again: that
    lookup is counted apart (llmq:prefix_cache_preempted_*_total, as vLLM's
    PrefixCacheStats keeps preempted_queries/preempted_hits apart), and the
    hit-rate counters still count each request's first start only.
Expected counts come from the 16-token block arithmetic written out here.
"""
import http.client
import json
import random
import time

import msgpack
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, chunks, connect, job, submit, wait_final

BLOCK = 16
_rng = random.Random(2020)
PREFIX = [_rng.randrange(3, 512) for _ in range(70)]         # 4 full blocks + 6 tokens
FIRST, SECOND = PREFIX + [7, 8, 9], PREFIX + [10, 11]        # SECOND finds FIRST's 4 blocks
# two prompts of 2 full blocks + 1 token that grow to 6 blocks each: 12 > 9, so one is preempted
LONG = [[_rng.randrange(3, 512) for _ in range(33)] for _ in range(2)]
LONG_GEN = 60


def metrics(port, names, done, timeout=10):
    """{name: value} of the worker's /metrics (rendered every few hundred ms,
    so the last final writes may be a snapshot behind): once done(it), or
    the last read after timeout."""
    deadline, got = time.time() + timeout, {}
    while time.time() < deadline:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        got = {ln.split("{")[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.split("{")[0] in names}
        if done(got):
            break
        time.sleep(0.1)
    return got


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("prefix_usage")
    srv = RedisServer(tmp, free_port()).start()
    port = free_port()
    w = gw = None
    try:
        with pytest.MonkeyPatch.context() as mp:  # one OpenMP thread: no barrier stalls on a busy machine
            mp.setenv("OMP_NUM_THREADS", "1")
            w = Worker(shared_dir / "models" / "stories260K", srv.url, "stories", tmp / "w.log",
                       "--metrics-port", port, "--max-num-seqs", 2, "--kv-blocks", 9)
        gw = Gateway(srv.url, tmp / "gw.log")
        r = connect(srv.url)
        for jid, p in (("first", FIRST), ("second", SECOND)):  # one at a time: second finds first's blocks
            submit(r, jid, prompt_ids=p, max_tokens=2, temperature=0)
            wait_final(r, [jid])
        # together (one transaction: the worker reads both at once), they outgrow the pool
        pipe = r.pipeline(transaction=True)
        for i, p in enumerate(LONG):
            body = dict(v=1, id=f"long{i}", model="stories", prompt_ids=p, max_tokens=LONG_GEN, ignore_eos=True,
                        temperature=0)
            pipe.hset(f"llmq:job:{{long{i}}}", mapping={"state": "queued", "model": "stories",
                                                         "created": int(time.time() * 1000), "attempts": 0})
            pipe.xadd("llmq:req:stories", {"id": f"long{i}", "p": msgpack.packb(body)})
        pipe.execute()
        wait_final(r, ["long0", "long1"])
        yield dict(r=r, gw=gw, port=port)
    finally:
        if gw:
            gw.stop()
        if w:
            w.stop()
        srv.stop()


def get_job(gw, jid):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request("GET", f"/v1/jobs/{jid}")
    resp = c.getresponse()
    assert resp.status == 200
    return json.loads(resp.read())


def test_job_hash_keeps_cached_tokens(fleet):
    r, gw = fleet["r"], fleet["gw"]
    want = BLOCK * (len(PREFIX) // BLOCK)  # 64: the full blocks both prompts share
    assert job(r, "second").get("cached_tokens") == str(want)
    assert "cached_tokens" not in job(r, "first")  # nothing cached: no field, as in the chunk
    assert chunks(r, "second")[-1]["usage"]["cached_tokens"] == want
    # the final chunk trimmed away: the record still says it, from the hash
    r.xtrim("llmq:job:{second}:out", maxlen=0, approximate=False)
    rec = get_job(gw, "second")
    assert rec["chunks"] == 0 and rec["status"] == "done"
    assert rec["usage"]["prompt_tokens"] == len(SECOND)
    assert rec["usage"]["prompt_tokens_details"] == {"cached_tokens": want}, rec["usage"]
    assert "prompt_tokens_details" not in get_job(gw, "first")["usage"]


def test_restart_after_preemption_counted_apart(fleet):
    names = ("llmq:num_preemptions_total", "llmq:prefix_cache_queries_total", "llmq:prefix_cache_hits_total",
             "llmq:prefix_cache_preempted_queries_total", "llmq:prefix_cache_preempted_hits_total")
    first = {"llmq:prefix_cache_queries_total": len(FIRST) + len(SECOND) + sum(map(len, LONG)),
             "llmq:prefix_cache_hits_total": BLOCK * (len(PREFIX) // BLOCK)}
    got = metrics(fleet["port"], names, lambda g: all(g.get(k) == v for k, v in first.items())
                  and g.get("llmq:prefix_cache_preempted_queries_total"))
    # each request's first start only: the hit rate is not raised by restarts
    assert {k: got.get(k) for k in first} == first, got
    assert got["llmq:num_preemptions_total"] >= 1, got
    pq, ph = got["llmq:prefix_cache_preempted_queries_total"], got["llmq:prefix_cache_preempted_hits_total"]
    # the victim recomputes its prompt and what it had generated: more than its prompt, less than all of it
    assert len(LONG[0]) < pq <= got["llmq:num_preemptions_total"] * (len(LONG[0]) + LONG_GEN), got
    # blocks are freed tail first, so its first full blocks are found again (measured: one
    # preemption at 65 tokens, 48 found: the survivor took the victim's 4th block)
    assert ph % BLOCK == 0 and 2 * BLOCK <= ph < pq, got
