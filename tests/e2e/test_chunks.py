"""Cheaper chunks on Redis (issue 25) end to end — real redis-server, real
llmq-worker on stories260K, real llmq-gateway: a step's chunks of all jobs
go out in one script call, a job whose fence fails is dropped alone, and
with --chunk-interval-ms a busy Redis gets chunks of several tokens whose
concatenation is still exactly the greedy reference (also across kill -9
and with stop strings), with seqs that never repeat.

Redis is made "busy" by a client that keeps it inside a Lua busy-wait for
most of each few ms, so the worker's chunk call is not answered by the end
of its next step, which is what coalescing waits for."""
import json
import threading
import time

import msgpack
import pytest
import redis

from worker_util import (Gateway, Worker, assert_clean_stream, chunks, connect, ids_of, job, submit, text_of,
                         wait_final)

BUSY_LUA = """local t0 = redis.call('TIME')
local s = t0[1] * 1000000 + t0[2]
repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - s >= tonumber(ARGV[1])
return 1"""


class BusyRedis:
    """Keeps Redis inside a script for busy_us of every busy_us + idle_s."""

    def __init__(self, url, busy_us=15000, idle_s=0.004):
        self.r = redis.Redis.from_url(url)
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self.run, args=(busy_us, idle_s), daemon=True)
        self.t.start()

    def run(self, busy_us, idle_s):
        script = self.r.register_script(BUSY_LUA)
        while not self.stop_ev.is_set():
            script(args=[busy_us])
            time.sleep(idle_s)

    def stop(self):
        self.stop_ev.set()
        self.t.join(10)


def commandstat(r, name):
    return r.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers of one OpenMP thread: the same bits, and no barrier that stalls
    for a time slice on a machine busy with other work."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_a_step_is_one_call_and_a_fenced_job_is_dropped_alone(redis_server, stories, tmp_path):
    """16 jobs in one batch: the chunk writes of a step are one EVAL for all
    of them (before: one per job per token), and a job whose fence fails
    (another worker admitted it: attempts moved on) stops being written
    while the others of the same calls finish exactly."""
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-num-seqs", 16, "--claim-idle-ms", 60000)
    try:
        r.config_resetstat()
        jids = [f"one{i}" for i in range(16)]
        for i, jid in enumerate(jids):
            submit(r, jid, prompt=refs[i % 8]["prompt"], max_tokens=48, temperature=0)
        deadline = time.time() + 30
        while time.time() < deadline and r.xlen("llmq:job:{one0}:out") < 3:
            time.sleep(0.002)
        assert not chunks(r, "one0")[-1].get("finish"), "job one0 ended before it could be fenced out"
        r.hset("llmq:job:{one0}", "attempts", 99)  # as if another worker had taken it over
        fenced_at = len(chunks(r, "one0"))
        wait_final(r, jids[1:], timeout=60)
        time.sleep(0.1)
        cs0 = chunks(r, "one0")
        assert len(cs0) <= fenced_at + 1 and not any(c.get("finish") for c in cs0)  # one call may have been in flight
        assert job(r, "one0")["state"] == "running"
        total_chunks = 0
        for i, jid in enumerate(jids[1:], 1):
            cs = chunks(r, jid)
            assert_clean_stream(cs)
            assert ids_of(cs) == refs[i % 8]["output_ids"], jid
            assert text_of(cs) == refs[i % 8]["completion"], jid
            total_chunks += len(cs)
        evals = commandstat(r, "eval")
        # one admission and one final per job, one chunk call per step (~48 steps), a few reads
        assert evals < total_chunks / 4, (evals, total_chunks)
    finally:
        w.stop()


def test_chunks_go_by_sha_and_survive_script_flush(redis_server, stories, tmp_path):
    """The chunk call and the lane read go as EVALSHA (the script's text is
    not sent with every step); SCRIPT FLUSH mid-run (as a restart or a
    failover empties Redis's script cache) makes an EVALSHA fail with
    NOSCRIPT, and the same call then goes as EVAL: every job still ends
    exactly the reference, its seqs without gap or repeat."""
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--max-num-seqs", 8)
    try:
        r.config_resetstat()
        jids = [f"sha{i}" for i in range(8)]
        for i, jid in enumerate(jids):
            submit(r, jid, prompt=refs[i]["prompt"], max_tokens=48, temperature=0)
        for at in (3, 12, 24):  # three flushes while the jobs run
            deadline = time.time() + 30
            while time.time() < deadline and r.xlen("llmq:job:{sha0}:out") < at:
                time.sleep(0.002)
            assert not chunks(r, "sha0")[-1].get("finish"), "sha0 ended before the flush"
            r.script_flush()
        wait_final(r, jids, timeout=60)
        for i, jid in enumerate(jids):
            cs = chunks(r, jid)
            assert_clean_stream(cs)
            assert ids_of(cs) == refs[i]["output_ids"], jid
            assert text_of(cs) == refs[i]["completion"], jid
        shas, evals = commandstat(r, "evalsha"), commandstat(r, "eval")
        noscript = r.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)
        assert noscript >= 1, "no EVALSHA met an empty script cache"
        # each chunk of sha0 but its final came from one chunk call, by SHA unless it met NOSCRIPT
        # (then EVAL); EVAL: 8 admits, 8 finals, the groups' creation at connect, and each call
        # that met NOSCRIPT once more
        calls = sum(1 for c in chunks(r, "sha0") if not c.get("finish"))
        assert calls >= 10 and shas >= calls - noscript, (calls, shas, evals, noscript)
        assert evals <= 17 + noscript, (shas, evals, noscript)
    finally:
        w.stop()


def sse(port, body):
    """POST /v1/completions streaming: the text and logprob tokens of every event."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    resp = c.getresponse()
    assert resp.status == 200, resp.read()
    events = []
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line == "data: [DONE]":
            break
        if line.startswith("data: "):
            events.append(json.loads(line[6:])["choices"][0])
    c.close()
    return events


def mid_job(r, jids):
    """Whether a job has chunks but not its final one yet: each job's last
    entry, all in one round trip (Redis is busy: a read may wait ~15 ms)."""
    p = r.pipeline(transaction=False)
    for jid in jids:
        p.xrevrange(f"llmq:job:{{{jid}}}:out", count=1)
    return any(e and not msgpack.unpackb(e[0][1][b"c"]).get("finish") for e in p.execute())


def test_coalescing_is_exact_across_kill9_stop_strings_and_the_gateway(redis_server, stories, tmp_path):
    """--chunk-interval-ms with a busy Redis: chunks carry several ids, and
    what clients read is still the reference, token for token — after a
    kill -9 and resume by another worker (no seq twice), with a stop string
    (held back, then cut exactly), and through the gateway's SSE with
    logprobs (one per token, however many tokens an event carries)."""
    d, refs = stories
    r = connect(redis_server.url)
    busy = BusyRedis(redis_server.url)
    args = ("--max-num-seqs", 4, "--chunk-interval-ms", 200)
    w1 = w2 = gw = None
    ref = refs[0]["completion"]
    stop = "girl"  # the first occurrence of a word well inside the reference completion
    try:
        # The kill must land while a started job is unfinished; with 200 ms
        # windows a job's last tokens can go out between the check and the
        # kill, so a round that came too late is tried again with new jobs
        # (their leftovers are finished by w2 and not checked).
        for rnd in range(5):
            w1 = Worker(d, redis_server.url, "stories", tmp_path / f"w1-{rnd}.log", *args, "--consumer", f"w1-{rnd}")
            jids = [f"co{rnd}-{i}" for i in range(8)]
            for i, jid in enumerate(jids):
                submit(r, jid, prompt=refs[i % 8]["prompt"], max_tokens=48, temperature=0)
            stop_id = f"costop{rnd}"
            submit(r, stop_id, prompt=refs[0]["prompt"], max_tokens=48, temperature=0, stop=[stop])
            deadline = time.time() + 30
            while time.time() < deadline and not mid_job(r, jids):
                time.sleep(0.002)
            w1.kill()
            started = [j for j in jids if chunks(r, j)]
            if any(not chunks(r, j)[-1].get("finish") for j in started):
                break
        else:
            pytest.fail("in 5 rounds the kill always came too late to test a resume")
        w2 = Worker(d, redis_server.url, "stories", tmp_path / "w2.log", *args, "--consumer", "w2",
                    "--claim-idle-ms", 300)
        gw = Gateway(redis_server.url, tmp_path / "gw.log")
        events = sse(gw.port, dict(model="stories", prompt=refs[3]["prompt"], max_tokens=48, temperature=0,
                                   logprobs=1))
        wait_final(r, jids + [stop_id], timeout=90)
        multi = 0
        for i, jid in enumerate(jids):
            cs = chunks(r, jid)
            assert_clean_stream(cs)
            assert ids_of(cs) == refs[i % 8]["output_ids"], jid
            assert text_of(cs) == refs[i % 8]["completion"], jid
            # without coalescing every chunk, the last included, carries one id
            multi += sum(1 for c in cs if len(c["ids"]) > 1)
        assert multi > 0, "no chunk carried several tokens: coalescing never happened"
        assert any(int(job(r, j)["attempts"]) == 2 for j in jids)
        cs = chunks(r, stop_id)
        assert_clean_stream(cs)
        assert text_of(cs) == ref[:ref.index(stop)] and cs[-1]["finish"] == "stop"
        assert "".join(e["text"] for e in events) == refs[3]["completion"]
        assert sum(len(e["logprobs"]["tokens"]) for e in events if e.get("logprobs")) == 48
    finally:
        busy.stop()
        for p in (w1, w2, gw):
            if p:
                p.stop()
