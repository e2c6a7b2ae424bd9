"""llmq-worker end to end with a real redis-server and requests written by
redis-py: reference outputs, batching that changes nothing, resume after
kill -9, cancellation, deadlines, poison entries, draining."""
import json
import subprocess
import time

import pytest

from llmqtest import FIXTURES
from worker_util import Worker, assert_clean_stream, chunks, connect, ids_of, job, submit, text_of, wait_final






def test_reference_completions_through_redis(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log")
    try:
        for i, ref in enumerate(refs):
            submit(r, f"ref{i}", prompt=ref["prompt"], max_tokens=48, temperature=0)
        wait_final(r, [f"ref{i}" for i in range(len(refs))])
        for i, ref in enumerate(refs):
            cs = chunks(r, f"ref{i}")
            assert_clean_stream(cs)
            assert ids_of(cs) == ref["output_ids"]
            assert text_of(cs) == ref["completion"]
            h = job(r, f"ref{i}")
            assert h["state"] == "done" and h["finish_reason"] == "length"
            assert int(h["completion_tokens"]) == 48 and int(h["prompt_tokens"]) == len(ref["prompt_ids"])
            assert r.ttl(f"llmq:job:{{ref{i}}}") > 0
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
    finally:
        w.stop()


def test_64_concurrent_equal_alone(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-num-seqs", 16, "--kv-blocks", 40)
    try:
        reqs = []
        for i in range(64):
            ref = refs[i % len(refs)]
            req = dict(prompt=ref["prompt"], max_tokens=8 + (i * 7) % 40)
            if i % 2:
                req.update(temperature=0.8, top_p=0.9, seed=1000 + i)
            else:
                req.update(temperature=0)
            reqs.append(req)
            submit(r, f"c{i}", **req)
        wait_final(r, [f"c{i}" for i in range(64)], timeout=120)
        batched = {i: chunks(r, f"c{i}") for i in range(64)}
        # the same requests one at a time
        for i in range(0, 64, 5):
            submit(r, f"alone{i}", **reqs[i])
            wait_final(r, [f"alone{i}"])
            assert ids_of(chunks(r, f"alone{i}")) == ids_of(batched[i]), i
            assert text_of(chunks(r, f"alone{i}")) == text_of(batched[i]), i
        for i in range(64):
            assert_clean_stream(batched[i])
    finally:
        w.stop()


def test_kill9_resume_is_seamless(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    reqs = {f"k{i}": dict(prompt=refs[i % 8]["prompt"], max_tokens=300, ignore_eos=True,
                          **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.7, "seed": 7 + i}))
            for i in range(20)}
    # uninterrupted run
    w = Worker(d, redis_server.url, "stories", tmp_path / "ref.log", "--max-num-seqs", 4)
    for jid, req in reqs.items():
        submit(r, "u" + jid, **req)
    wait_final(r, ["u" + j for j in reqs], timeout=120)
    w.stop()
    expected = {jid: chunks(r, "u" + jid) for jid in reqs}
    # interrupted run: kill -9 while jobs are half done, then a fresh worker
    w1 = Worker(d, redis_server.url, "stories", tmp_path / "w1.log", "--max-num-seqs", 4, "--consumer", "w1")
    for jid, req in reqs.items():
        submit(r, jid, **req)
    deadline = time.time() + 30
    while time.time() < deadline and sum(len(chunks(r, j)) > 0 for j in reqs) < 4:
        time.sleep(0.01)
    w1.kill()
    started = [j for j in reqs if chunks(r, j)]
    assert any(not chunks(r, j)[-1].get("finish") for j in started), "kill came too late to test a resume"
    w2 = Worker(d, redis_server.url, "stories", tmp_path / "w2.log", "--max-num-seqs", 4, "--consumer", "w2",
                "--claim-idle-ms", 300)
    try:
        wait_final(r, list(reqs), timeout=120)
        for jid in reqs:
            cs = chunks(r, jid)
            assert_clean_stream(cs)
            assert ids_of(cs) == ids_of(expected[jid]), jid
            assert text_of(cs) == text_of(expected[jid]), jid
            h = job(r, jid)
            assert h["state"] == "done"
        assert any(int(job(r, j)["attempts"]) == 2 for j in reqs)
    finally:
        w2.stop()


def test_cancel_deadline_poison_and_errors(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-num-seqs", 2)
    try:
        # garbage entries: no id, undecodable payload
        r.xadd("llmq:req:stories", {"junk": "1"})
        r.xadd("llmq:req:stories", {"id": "poison1", "p": b"\xc1\xff not msgpack"})
        # a long job we cancel, one past its deadline, one with a bad type, one too long
        submit(r, "long", prompt=refs[0]["prompt"], max_tokens=500, ignore_eos=True)
        submit(r, "late", prompt="hi", max_tokens=5, deadline_ms=int(time.time() * 1000) - 1000)
        submit(r, "badtype", prompt="hi", temperature="hot")
        submit(r, "toolong", prompt_ids=[1] * 600)
        submit(r, "ok", prompt=refs[1]["prompt"], max_tokens=48, temperature=0)
        while not chunks(r, "long"):
            time.sleep(0.01)
        r.hset("llmq:job:{long}", "cancel", 1)
        r.publish("llmq:cancel", "long")
        wait_final(r, ["long", "late", "badtype", "toolong", "ok", "poison1"])
        assert job(r, "long")["state"] == "cancelled" and chunks(r, "long")[-1]["finish"] == "cancelled"
        assert job(r, "late")["state"] == "expired" and job(r, "late")["finish_reason"] == "deadline"
        bad = job(r, "badtype")
        assert bad["state"] == "failed" and "temperature" in bad["error"]
        assert chunks(r, "badtype")[-1]["finish"] == "error" and "temperature" in chunks(r, "badtype")[-1]["error"]
        long_ = job(r, "toolong")
        assert long_["state"] == "failed" and "context" in long_["error"]
        assert job(r, "poison1")["state"] == "failed"
        dead = r.xrange("llmq:dead:stories")
        reasons = [e[1][b"reason"].decode() for e in dead]
        assert any("decode" in x for x in reasons) and any("job id" in x for x in reasons)
        assert text_of(chunks(r, "ok")) == refs[1]["completion"]
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
    finally:
        w.stop()


def test_output_that_cannot_be_replayed_fails_the_job(redis_server, stories, tmp_path):
    """A job taken over from another worker resumes from its output stream.
    When that output cannot be replayed whole (a chunk that does not decode,
    an id outside the vocabulary), the job fails with the reason rather than
    resume from part of it; its final chunk takes the seq after the stream's
    chunks, also for a job whose attempts ran out."""
    import msgpack
    d, refs = stories
    r = connect(redis_server.url)

    def ran_elsewhere(jid, attempts, *cs):
        submit(r, jid, prompt="Once upon a time", max_tokens=8)
        r.hset(f"llmq:job:{{{jid}}}", mapping={"state": "running", "attempts": attempts})
        for c in cs:
            r.xadd(f"llmq:job:{{{jid}}}:out", {"c": c})

    good = msgpack.packb({"seq": 0, "text": " Once", "ids": [403]})
    ran_elsewhere("corrupt", 1, good, b"\xc1 not msgpack")
    ran_elsewhere("oov", 1, msgpack.packb({"seq": 0, "text": "?", "ids": [100000]}))
    ran_elsewhere("tired", 3, good)
    submit(r, "fine", prompt=refs[0]["prompt"], max_tokens=48, temperature=0)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-attempts", 3)
    try:
        wait_final(r, ["corrupt", "oov", "tired", "fine"])
        for jid, why, seq in (("corrupt", "cannot be decoded", 2), ("oov", "outside the vocabulary", 1),
                              ("tired", "max 3", 1)):
            h = job(r, jid)
            assert h["state"] == "failed" and why in h["error"], (jid, h)
            last = msgpack.unpackb(r.xrange(f"llmq:job:{{{jid}}}:out")[-1][1][b"c"])
            assert last["finish"] == "error" and why in last["error"] and last["seq"] == seq, (jid, last)
            assert last.get("status", 500) == 500
        assert text_of(chunks(r, "fine")) == refs[0]["completion"]
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
    finally:
        w.stop()


def test_sigterm_drains_and_exits_zero(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-num-seqs", 2, "--drain-timeout", 30)
    for i in range(6):
        submit(r, f"d{i}", prompt=refs[i]["prompt"], max_tokens=200, ignore_eos=True, temperature=0)
    while not chunks(r, "d0"):
        time.sleep(0.01)
    assert w.term() == 0
    states = [job(r, f"d{i}")["state"] for i in range(6)]
    assert states[0] == "done" and states[1] == "done"
    # the rest were never pulled: still queued in the stream for another worker
    assert all(s in ("done", "queued") for s in states)
    assert "queued" in states
    w2 = Worker(d, redis_server.url, "stories", tmp_path / "w2.log")
    try:
        wait_final(r, [f"d{i}" for i in range(6)])
        assert all(job(r, f"d{i}")["state"] == "done" for i in range(6))
    finally:
        w2.stop()


def test_prompt_ids_without_tokenizer(redis_server, tmp_path):
    d = FIXTURES / "hf" / "llama_mha"
    exp = json.loads((d / "expected.json").read_text())["cases"][0]
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "mha", tmp_path / "w.log")
    try:
        submit(r, "p1", model="mha", prompt_ids=exp["prompt_ids"], max_tokens=len(exp["greedy"]),
               temperature=0, ignore_eos=True)
        submit(r, "p2", model="mha", prompt="text needs a tokenizer")
        wait_final(r, ["p1", "p2"])
        assert ids_of(chunks(r, "p1")) == exp["greedy"]
        assert "tokenizer" in job(r, "p2")["error"]
    finally:
        w.stop()


def test_redis_restart_with_aof(tmp_path, stories):
    """redis-server (AOF on) restarts in the middle of streaming jobs: the
    worker reconnects with backoff, says so, and every job completes with
    exactly the output it would have had, seq without gap or repeat.  The
    worker runs the synthetic engine at a fixed rate (real admission,
    scheduler, detokenizer and Redis traffic; no compute), so that the jobs
    are still streaming when Redis goes away on any machine (the real tiny
    model could finish all eight before redis-server had stopped); the
    expected texts are `llmq generate` on the same engine, uninterrupted."""
    from llmqtest import BUILD, RedisServer, free_port  # noqa: E402
    d, refs = stories
    rate = 500  # tokens a second per sequence: 48 tokens take ~0.1 s
    prompts = [refs[i]["prompt"] for i in range(8)]
    args = [str(BUILD / "llmq"), "generate", "--model", str(d), "--backend", f"synthetic:{rate}", "--json",
            "--max-tokens", "48", "--temperature", "0"] + [a for p in prompts for a in ("--prompt", p)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    expect = {o["index"]: o["text"] for o in map(json.loads, out.splitlines())}
    srv = RedisServer(tmp_path, free_port(), ["--appendonly", "yes", "--appendfsync", "always"]).start()
    w = Worker(d, srv.url, "stories", tmp_path / "w.log", "--max-num-seqs", 2, "--claim-idle-ms", 1000,
               "--backend", "synthetic", "--synthetic-rate", rate)
    try:
        r = connect(srv.url)
        jids = [f"a{i}" for i in range(8)]
        for i, jid in enumerate(jids):
            submit(r, jid, prompt=prompts[i], max_tokens=48, temperature=0)
        while not any(chunks(r, j) for j in jids):
            time.sleep(0.005)
        srv.stop()
        time.sleep(0.5)
        srv.start()
        r = connect(srv.url)
        wait_final(r, jids, timeout=60)
        for i, jid in enumerate(jids):
            cs = chunks(r, jid)
            assert_clean_stream(cs)
            assert text_of(cs) == expect[i], jid
            assert job(r, jid)["state"] == "done"
        log = (tmp_path / "w.log").read_text()
        assert "redis connection lost" in log and "reconnected" in log, log
        assert "dropping 0 in-flight jobs" not in log, "Redis went away after every job had finished"
    finally:
        w.stop()
        srv.stop()


def test_max_attempts_dead_stream_and_metrics(redis_server, stories, tmp_path):
    """A job delivered more than --max-attempts times is failed into the dead
    stream with the reason; /metrics, /readyz and the heartbeat report."""
    import http.client
    from llmqtest import free_port
    d, refs = stories
    r = connect(redis_server.url)
    port = free_port()
    submit(r, "tired", prompt="hi", max_tokens=4)
    r.hset("llmq:job:{tired}", "attempts", 3)  # three deliveries already happened elsewhere
    submit(r, "fine", prompt=refs[0]["prompt"], max_tokens=48, temperature=0)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-attempts", 3, "--metrics-port", port)
    try:
        wait_final(r, ["tired", "fine"])
        h = job(r, "tired")
        assert h["state"] == "failed" and "max 3" in h["error"]
        dead = r.xrange("llmq:dead:stories")
        assert any(e[1][b"id"] == b"tired" and b"max 3" in e[1][b"reason"] for e in dead)
        assert text_of(chunks(r, "fine")) == refs[0]["completion"]

        def get(path):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            resp = c.getresponse()
            return resp.status, resp.read().decode()
        st, body = get("/metrics")
        assert st == 200
        assert 'llmq:generation_tokens_total{model_name="stories"} 48' in body
        assert 'llmq:request_success_total{finished_reason="length",model_name="stories"} 1' in body
        assert 'llmq:request_success_total{finished_reason="error",model_name="stories"} 1' in body
        assert 'llmq:time_to_first_token_seconds_count{model_name="stories"} 1' in body
        assert get("/readyz")[0] == 200
        time.sleep(2.2)
        beat = json.loads(next(iter(r.hgetall("llmq:workers").values())))
        assert beat["model"] == "stories" and beat["capacity"] == 32
    finally:
        w.stop()
