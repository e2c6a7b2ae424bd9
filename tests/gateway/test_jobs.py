"""The job API of llmq-gateway: submit, poll, events (with and without
Last-Event-ID), cancel — and jobs that never went through the gateway."""
import json
import time

import msgpack
import redis

from fake_worker import wait_for
from gwtest import sse_events


def submit(gw, **body):
    body.setdefault("model", "m1")
    st, h, b = gw.request("POST", "/v1/jobs", body)
    assert st == 202, b
    j = json.loads(b)
    assert j["status"] == "queued" and j["object"] == "job" and j["model"] == body["model"]
    assert h["location"] == f"/v1/jobs/{j['id']}"
    return j["id"]


def events(gw, jid, last=None, query=""):
    c = gw.connect()
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    c.request("GET", f"/v1/jobs/{jid}/events{query}", headers=headers)
    r = c.getresponse()
    assert r.status == 200
    evs = list(sse_events(r))
    c.close()
    return evs


def test_submit_poll_until_done(gateway, worker, redis_server):
    jid = submit(gateway, prompt="tell me", max_tokens=4, temperature=0.5, top_k=40, stop=["\n"],
                 ignore_eos=True, priority=3)
    st, j = gateway.json("GET", f"/v1/jobs/{jid}")
    assert st == 200 and j["status"] == "queued" and j["text"] == "" and j["usage"] is None
    r = redis.Redis.from_url(redis_server.url)
    h = r.hgetall(f"llmq:job:{{{jid}}}")
    assert h[b"state"] == b"queued" and h[b"model"] == b"m1" and int(h[b"created"]) > 0
    w = worker()
    j = wait_for(lambda: (lambda s: s[1] if s[1]["status"] == "done" else None)(gateway.json("GET", f"/v1/jobs/{jid}")))
    assert j["text"] == " t0 t1 t2 t3"
    assert j["finish_reason"] == "length"
    assert j["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert j["attempts"] == 1 and j["chunks"] == 5 and j["started"] >= j["created"]
    req = w.seen[-1]
    assert req["top_k"] == 40 and req["stop"] == ["\n"] and req["ignore_eos"] is True and req["priority"] == 3


def test_text_so_far_while_running(gateway, worker):
    worker(delay=0.2)
    jid = submit(gateway, prompt="x", max_tokens=20)
    j = wait_for(lambda: (lambda s: s[1] if s[1]["text"] else None)(gateway.json("GET", f"/v1/jobs/{jid}")))
    assert j["status"] == "running" and j["text"].startswith(" t0") and j["finish_reason"] is None


def test_events_full_and_resumed(gateway, worker):
    worker(delay=0.01)
    jid = submit(gateway, prompt="x", max_tokens=5)
    evs = events(gateway, jid)
    assert [int(e["id"]) for e in evs] == list(range(6))
    chunks = [json.loads(e["data"]) for e in evs]
    assert [c["seq"] for c in chunks] == list(range(6))
    assert "".join(c["text"] for c in chunks) == " t0 t1 t2 t3 t4"
    assert chunks[2]["ids"] == [102]
    assert chunks[-1]["finish"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 5
    # resume after seq 2: the rest, once
    evs = events(gateway, jid, last=2)
    assert [int(e["id"]) for e in evs] == [3, 4, 5]
    evs = events(gateway, jid, query="?last_event_id=4")
    assert [int(e["id"]) for e in evs] == [5]
    # past the end of a finished job: the stream just ends
    assert events(gateway, jid, last=5) == []
    st, _, _ = gateway.request("GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": "x"})
    assert st == 400


INT64_MAX = (1 << 63) - 1


def test_last_event_id_is_strict(gateway, worker):
    """Last-Event-ID / ?last_event_id= is the seq of the last chunk received:
    decimal digits, 0 .. INT64_MAX, nothing else (strtoll took "+5", "-0",
    leading blanks of every kind, and clamped what overflowed).  The largest
    value replays nothing: last + 1 overflowed, and the stream started over
    at seq 0."""
    quick = worker(delay=0.01)
    jid = submit(gateway, prompt="x", max_tokens=5)
    assert len(events(gateway, jid)) == 6
    bad_headers = ["+5", "-0", "-1", "5a", "0x5", "1e3", "5.0", "2 3", "2\t3",
                   str(INT64_MAX + 1), "99999999999999999999"]
    for bad in bad_headers:
        st, _, b = gateway.request("GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": bad})
        assert st == 400, (bad, st, b[:200])
        e = json.loads(b)["error"]
        assert set(e) == {"message", "type", "param", "code"}, e
        assert e["type"] == "invalid_request_error" and e["param"] == "Last-Event-ID", e
        assert "decimal integer" in e["message"], e
    for bad in ["+5", "-0", "%205", "%095", "5a", str(INT64_MAX + 1), ""]:
        st, _, b = gateway.request("GET", f"/v1/jobs/{jid}/events?last_event_id={bad}")
        assert st == 400, (bad, st, b[:200])
        assert json.loads(b)["error"]["param"] == "last_event_id", b
    # blanks around a header value are not part of it (RFC 9110 OWS)
    assert [int(e["id"]) for e in events(gateway, jid, last=" 3 ")] == [4, 5]
    assert [int(e["id"]) for e in events(gateway, jid, query="?last_event_id=3&x=1")] == [4, 5]
    # the largest seq there is: nothing after it, for an ended job ...
    assert events(gateway, jid, last=INT64_MAX) == []
    assert events(gateway, jid, query=f"?last_event_id={INT64_MAX}") == []
    assert events(gateway, jid, last="0" * 30 + "2")[0]["id"] == "3"  # leading zeros are digits too
    # ... and for a running one: the stream ends when the job does, empty
    quick.stop()
    worker(delay=0.2)
    jid = submit(gateway, prompt="x", max_tokens=10)
    assert events(gateway, jid, last=INT64_MAX) == []
    assert len(events(gateway, jid)) == 11


def test_events_live_while_generating(gateway, worker):
    jid = submit(gateway, prompt="x", max_tokens=8)
    c = gateway.connect()
    c.request("GET", f"/v1/jobs/{jid}/events")
    r = c.getresponse()
    worker(delay=0.02)  # starts after the client subscribed
    seqs = [json.loads(e["data"])["seq"] for e in sse_events(r)]
    assert seqs == list(range(9))


def test_many_concurrent_streams(gateway, worker):
    worker(delay=0.0)
    ids = [submit(gateway, prompt="x", max_tokens=3) for _ in range(20)]
    conns = []
    for jid in ids:
        c = gateway.connect()
        c.request("GET", f"/v1/jobs/{jid}/events")
        conns.append(c)
    for c in conns:
        seqs = [json.loads(e["data"])["seq"] for e in sse_events(c.getresponse())]
        assert seqs == [0, 1, 2, 3]
        c.close()


def test_cancel_queued(gateway, worker, redis_server):
    jid = submit(gateway, prompt="x")
    st, j = gateway.json("DELETE", f"/v1/jobs/{jid}")
    assert st == 200 and j["status"] == "cancelled"
    st, j = gateway.json("GET", f"/v1/jobs/{jid}")
    assert j["status"] == "cancelled" and j["finish_reason"] == "cancelled" and j["cancel_requested"]
    evs = events(gateway, jid)
    assert json.loads(evs[-1]["data"])["finish"] == "cancelled"
    st, j = gateway.json("DELETE", f"/v1/jobs/{jid}")
    assert st == 409 and j["error"]["code"] == "job_finished"
    # the worker that pulls it later drops it without running it
    w = worker()
    r = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: r.xpending("llmq:req:m1", "workers")["pending"] == 0 and len(w.seen) == 1)
    assert r.xlen(f"llmq:job:{{{jid}}}:out") == 1


def test_cancel_running(gateway, worker, redis_server):
    sub = redis.Redis.from_url(redis_server.url).pubsub()
    sub.subscribe("llmq:cancel")
    worker(delay=0.05)
    jid = submit(gateway, prompt="x", max_tokens=500)
    wait_for(lambda: gateway.json("GET", f"/v1/jobs/{jid}")[1]["text"])
    st, j = gateway.json("DELETE", f"/v1/jobs/{jid}")
    assert st == 200 and j["status"] == "cancelling"
    j = wait_for(lambda: (lambda s: s[1] if s[1]["status"] == "cancelled" else None)(gateway.json("GET", f"/v1/jobs/{jid}")))
    assert j["finish_reason"] == "cancelled" and 0 < j["usage"]["completion_tokens"] < 500
    msgs = [m for m in (sub.get_message(timeout=1) for _ in range(3)) if m and m["type"] == "message"]
    assert msgs and msgs[0]["data"].decode() == jid


def test_unknown_jobs(gateway):
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"), ("DELETE", "/v1/jobs/nope"),
                         ("GET", "/v1/jobs/bad%7Bid%7D")):
        st, j = gateway.json(method, path)
        assert st == 404, path
        assert j["error"]["code"] == "job_not_found"
    st, _, _ = gateway.request("PUT", "/v1/jobs/abc")
    assert st == 405


def test_job_api_fields(gateway, worker):
    w = worker()
    jid = submit(gateway, prompt_ids=[1, 2, 3], max_tokens=2, timeout_ms=60000)
    events(gateway, jid)
    req = w.seen[-1]
    assert req["prompt_ids"] == [1, 2, 3] and req["deadline_ms"] > time.time() * 1000
    jid = submit(gateway, messages=[{"role": "user", "content": "hi"}], max_tokens=1, deadline_ms=1)
    evs = events(gateway, jid)
    assert json.loads(evs[-1]["data"])["finish"] == "deadline"
    st, j = gateway.json("GET", f"/v1/jobs/{jid}")
    assert j["status"] == "expired"
    st, j = gateway.json("POST", "/v1/jobs", {"model": "m1", "prompt": "a", "prompt_ids": [1]})
    assert st == 400


def test_straight_into_redis(gateway, worker, redis_server):
    """A client we did not write (redis-py) submits with a bare XADD, as
    docs/protocol.md allows; the gateway serves the result."""
    w = worker()
    r = redis.Redis.from_url(redis_server.url)
    req = {"v": 1, "id": "raw-job-1", "model": "m1", "prompt": "hello", "max_tokens": 3}
    r.xadd("llmq:req:m1", {"id": "raw-job-1", "p": msgpack.packb(req)})
    wait_for(lambda: r.hget("llmq:job:{raw-job-1}", "state") == b"done")
    st, j = gateway.json("GET", "/v1/jobs/raw-job-1")
    assert st == 200 and j["text"] == " t0 t1 t2" and j["model"] == "m1"
    # garbage in the stream fails that job only
    r.xadd("llmq:req:m1", {"id": "raw-job-2", "p": b"\xc1garbage"})
    wait_for(lambda: r.hget("llmq:job:{raw-job-2}", "state") == b"failed")
    st, j = gateway.json("GET", "/v1/jobs/raw-job-2")
    assert j["status"] == "failed" and "undecodable" in j["error"]
    assert len(w.seen) == 2
