"""What a fleet leaves in Redis, with a real redis-server and llmq-worker
(and llmq-gateway for the client's side): a request entry is deleted once
its job is final, so the request streams hold only what waits or runs;
poison that no delivery can fix (a job hash or an output stream of another
type, an `attempts` that is not a count) goes to the dead stream at once
instead of being claimed again forever.  (docs/protocol.md "What a worker
does", "Request entries".)"""
import http.client as http_client
import json
import time

import msgpack
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Worker, connect, job, submit, wait_final

LANES = ("llmq:req:stories#high", "llmq:req:stories", "llmq:req:stories#low")
FINAL = ("done", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("hygiene")
    srv = RedisServer(tmp, free_port()).start()
    r = connect(srv.url)
    for lane in LANES:
        r.xgroup_create(lane, "workers", id="0", mkstream=True)
    w = Worker(shared_dir / "models" / "stories260K", srv.url, "stories", tmp / "w.log", "--max-num-seqs", 4,
               "--claim-idle-ms", 500, "--max-attempts", 3)
    yield srv, r, tmp
    try:
        assert w.term(30) == 0  # a clean exit (LeakSanitizer's check under ASan)
    finally:
        w.stop()
        srv.stop()


def xadd_lane(r, lane, jid, **req):
    """submit() into any lane (its priority as the lane says)."""
    body = {"v": 1, "id": jid, "model": "stories", **req}
    pipe = r.pipeline(transaction=True)
    pipe.hset(f"llmq:job:{{{jid}}}", mapping={"state": "queued", "model": "stories",
                                             "created": int(time.time() * 1000), "attempts": 0})
    pipe.xadd(lane, {"id": jid, "p": msgpack.packb(body)})
    pipe.execute()


def dead_ids(r):
    return {f[b"id"].decode(): f[b"reason"].decode() for _, f in r.xrange("llmq:dead:stories")}


def test_final_jobs_leave_no_request_entry(fleet):
    """Every kind of end (done, failed before admission, undecodable,
    expired) deletes its entry: the three lanes end empty, nothing pending,
    and the group's lag is 0 (a number, not nil: only delivered entries are
    deleted).  Nothing was lost on the way: every entry was delivered."""
    srv, r, _ = fleet
    added = {lane: r.xinfo_stream(lane)["entries-added"] for lane in LANES}
    jids = []
    for i in range(12):
        jid = f"h{i}"
        xadd_lane(r, LANES[i % 3], jid, prompt="Once upon a time", max_tokens=4 + i % 5,
                  priority=(1, 0, -1)[i % 3])
        jids.append(jid)
    submit(r, "bad", prompt="hi", temperature="hot")                                        # invalid: 400
    submit(r, "late", prompt="hi", max_tokens=4, deadline_ms=int(time.time() * 1000) - 1)   # expired
    r.xadd("llmq:req:stories", {"id": "undecodable", "p": b"\xc1"})                         # dead-lettered
    r.xadd("llmq:req:stories", {"junk": "1"})                                               # no id
    jids += ["bad", "late", "undecodable"]
    wait_final(r, jids, 60)
    assert all(job(r, j)["state"] == "done" for j in jids[:12])
    deadline = time.time() + 5
    while sum(r.xlen(lane) for lane in LANES) and time.time() < deadline:
        time.sleep(0.05)
    assert [r.xlen(lane) for lane in LANES] == [0, 0, 0]
    for lane in LANES:
        assert r.xpending(lane, "workers")["pending"] == 0
        (g,) = r.xinfo_groups(lane)
        assert g["lag"] == 0, (lane, g)
        assert r.xinfo_stream(lane)["entries-added"] - added[lane] == (8 if lane == LANES[1] else 4)


def test_poison_job_keys_go_to_the_dead_stream(fleet):
    """A job hash replaced by a string, an output key that is not a stream,
    and an `attempts` that is not a count: each is dead-lettered at its first
    delivery with the reason, its entry acked and deleted, attempts never
    raised; a job whose hash is intact ends failed with the reason."""
    srv, r, _ = fleet
    good = msgpack.packb({"v": 1, "model": "stories", "prompt": "x", "max_tokens": 4})
    pipe = r.pipeline(transaction=True)
    pipe.set("llmq:job:{p-string}", "not a hash")
    pipe.xadd("llmq:req:stories", {"id": "p-string", "p": good})
    pipe.hset("llmq:job:{p-out}", mapping={"state": "queued", "model": "stories", "attempts": 0})
    pipe.set("llmq:job:{p-out}:out", "not a stream")
    pipe.xadd("llmq:req:stories#high", {"id": "p-out", "p": good})
    pipe.hset("llmq:job:{p-att}", mapping={"state": "queued", "model": "stories", "attempts": "many"})
    pipe.xadd("llmq:req:stories#low", {"id": "p-att", "p": good})
    pipe.execute()
    submit(r, "after", prompt="Once upon a time", max_tokens=4)
    deadline = time.time() + 10
    while not {"p-string", "p-out", "p-att"} <= dead_ids(r).keys() and time.time() < deadline:
        time.sleep(0.05)
    dead = dead_ids(r)
    assert "job hash is a string" in dead.get("p-string", ""), dead
    assert "output stream is a string" in dead.get("p-out", ""), dead
    assert "attempts" in dead.get("p-att", ""), dead
    assert r.type("llmq:job:{p-string}") == b"string" and r.get("llmq:job:{p-string}") == b"not a hash"
    h = job(r, "p-out")
    assert h["state"] == "failed" and "output stream is a string" in h["error"] and h["attempts"] == "0", h
    assert r.ttl("llmq:job:{p-out}") > 0
    h = job(r, "p-att")
    assert h["state"] == "failed" and h["attempts"] == "many", h
    wait_final(r, ["after"], 30)
    assert job(r, "after")["state"] == "done"  # the worker serves on
    for lane in LANES:
        assert r.xpending(lane, "workers")["pending"] == 0 and r.xlen(lane) == 0
    # dead-lettered once each, not at every re-delivery
    time.sleep(0.6)  # past --claim-idle-ms
    assert sorted(i for _, f in r.xrange("llmq:dead:stories") for i in [f[b"id"].decode()]
                  if i.startswith("p-")) == ["p-att", "p-out", "p-string"]


@pytest.fixture(scope="module")
def gateway(fleet):
    from worker_util import Gateway
    srv, _, tmp = fleet
    gw = Gateway(srv.url, tmp / "gw.log")
    yield gw
    gw.stop()
    assert gw.proc.returncode == 0


def http(gw, method, path, body=None, headers=None):
    c = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    c.close()
    return out


def test_redis_full_is_503_and_not_ready(fleet, gateway):
    """Redis at maxmemory (noeviction) refuses every write: a submission is a
    503 with Retry-After (not a 500 EXECABORT), through the MULTI and the
    script paths, and /readyz says not ready until Redis has room again."""
    srv, r, _ = fleet
    body = {"model": "stories", "prompt": "Once upon a time", "max_tokens": 4}
    r.config_set("maxmemory", "1")
    try:
        for path, headers in (("/v1/jobs", None), ("/v1/jobs", {"Idempotency-Key": "full-1"}),
                              ("/v1/completions", None)):
            st, h, b = http(gateway, "POST", path, body, headers)
            assert st == 503 and h.get("retry-after") == "1", (path, headers, st, h, b)
            assert json.loads(b)["error"]["code"] == "redis_unavailable"
        st, h, b = http(gateway, "GET", "/readyz")
        assert st == 503 and "full" in json.loads(b)["reason"], (st, b)
    finally:
        r.config_set("maxmemory", "0")
    deadline = time.time() + 5
    while http(gateway, "GET", "/readyz")[0] != 200 and time.time() < deadline:
        time.sleep(0.1)
    assert http(gateway, "GET", "/readyz")[0] == 200
    st, _, b = http(gateway, "POST", "/v1/jobs", body)
    assert st == 202, b


def test_trimmed_output_is_reported(fleet, gateway):
    """Chunks trimmed from an output stream (XTRIM) are never silently
    skipped: the events stream sends an `error` event (code output_trimmed,
    the missing seqs) before the chunks that remain, and the job record
    counts them in `output_trimmed`."""
    srv, r, _ = fleet
    st, _, b = http(gateway, "POST", "/v1/jobs", {"model": "stories", "prompt": "Once upon a time",
                                                  "max_tokens": 24, "ignore_eos": True})
    jid = json.loads(b)["id"]
    wait_final(r, [jid], 30)
    out = f"llmq:job:{{{jid}}}:out"
    n = r.xlen(out)
    assert n > 8
    r.xtrim(out, maxlen=4, approximate=False)
    st, _, b = http(gateway, "GET", f"/v1/jobs/{jid}")
    rec = json.loads(b)
    assert st == 200 and rec["output_trimmed"] == n - 4 and rec["chunks"] == n, rec
    st, h, b = http(gateway, "GET", f"/v1/jobs/{jid}/events")
    events = [e for e in b.decode().split("\n\n") if e.strip()]
    first = dict(line.split(": ", 1) for line in events[0].splitlines())
    assert first.get("event") == "error" and "id" not in first, events[0]
    err = json.loads(first["data"])
    assert err["error"]["code"] == "output_trimmed" and (err["missing_from"], err["missing_to"]) == (0, n - 5), err
    seqs = [json.loads(dict(line.split(": ", 1) for line in e.splitlines())["data"])["seq"] for e in events[1:]]
    assert seqs == list(range(n - 4, n)), seqs
    # a reader past the gap is told nothing
    st, h, b = http(gateway, "GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": str(n - 3)})
    assert b"event: error" not in b and b.count(b"data: ") == 2, b
