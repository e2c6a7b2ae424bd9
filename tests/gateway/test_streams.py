"""The life of an OpenAI request's job (gateway/routes_openai.c), with the
official `openai` client and raw sockets against the real llmq-gateway, real
Redis, and the protocol test driver as the worker:

  - usage is streamed only when `stream_options.include_usage` asks, once, in
    a last chunk with `choices: []` (OpenAI's and vLLM's shape);
  - a job refused before any output (the worker's error_status) is an HTTP
    error for a stream too, not a 200 carrying an SSE error;
  - a job no worker takes within --queue-timeout is cancelled, and the client
    gets a 503 with Retry-After; an admitted job runs past it;
  - a client that goes away cancels its job (not a job of the job API);
  - the idempotent replay of a finished job reports its real state.

One fleet for the module: model m1 has a fast worker, `slow` a worker that
takes 50 ms a token, `idle` none (its jobs stay queued).
"""
import http.client
import json
import socket
import threading
import time
import types

import msgpack
import openai
import pytest
import redis

from fake_worker import FakeWorker, wait_for
from gwtest import Gateway, sse_events
from llmqtest import RedisServer, free_port

QUEUE_TIMEOUT = 1.0  # s (--queue-timeout)
STEP = 0.05          # s per token of the `slow` worker


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    srv = RedisServer(d, free_port()).start()
    workers, gw = [], None
    try:
        gw = Gateway(srv.url, ["--models", "m1,slow,idle", "--queue-timeout", str(QUEUE_TIMEOUT)], d)
        gw.wait_ready()
        workers = [FakeWorker(srv.url, "m1").start(), FakeWorker(srv.url, "slow", delay=STEP).start()]
        yield types.SimpleNamespace(gw=gw, r=redis.Redis.from_url(srv.url, decode_responses=True))
    finally:
        for w in workers:
            w.stop()
        if gw:
            gw.stop()
        srv.stop()


def client(gw):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=30)


def job_hash(r, jid):
    return r.hgetall(f"llmq:job:{{{jid}}}")


def job_ids(r):
    return {k[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}") if k.endswith("}")}


def new_job(r, before, timeout=10):
    """The id of the one job created since `before` (a set of ids)."""
    return wait_for(lambda: next(iter(job_ids(r) - before), None), timeout)


def post_raw(gw, path, body, timeout=30):
    """Send a POST without waiting for the answer."""
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return c


def hang_up(c):
    """Close for real: a bare close() leaves the descriptor open while a
    response object (kept by a timeout's traceback) still refers to it."""
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()


def json_events(resp):
    return [json.loads(e["data"]) for e in sse_events(resp) if e.get("data") not in (None, "[DONE]")]


# ---------------------------------------------------------------- usage

def test_usage_streamed_once_and_only_when_asked(fleet):
    # not asked: no chunk carries usage, the finish_reason chunk included
    c = post_raw(fleet.gw, "/v1/completions", {"model": "m1", "prompt": "once upon a time", "max_tokens": 3,
                                               "stream": True})
    r = c.getresponse()
    assert r.status == 200
    evs = json_events(r)
    c.close()
    assert evs[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e.get("usage") is None for e in evs), evs

    # asked: once, in a last chunk of its own with no choices
    oc = client(fleet.gw)
    for chat in (False, True):
        if chat:
            chunks = list(oc.chat.completions.create(model="m1", messages=[{"role": "user", "content": "a b c d"}],
                                                     max_tokens=3, stream=True,
                                                     stream_options={"include_usage": True}))
        else:
            chunks = list(oc.completions.create(model="m1", prompt="once upon a time", max_tokens=3, stream=True,
                                                stream_options={"include_usage": True}))
        with_usage = [ch for ch in chunks if ch.usage is not None]
        assert with_usage == [chunks[-1]], chat
        assert chunks[-1].choices == []
        assert chunks[-2].choices[0].finish_reason == "length"
        u = chunks[-1].usage
        assert (u.completion_tokens, u.total_tokens) == (3, u.prompt_tokens + 3) and u.prompt_tokens > 0


# ---------------------------------------------------------------- errors

def test_refused_stream_is_an_http_error(fleet):
    oc = client(fleet.gw)
    with pytest.raises(openai.BadRequestError) as e:
        list(oc.completions.create(model="m1", prompt="FAIL", stream=True))
    assert e.value.status_code == 400 and "asked to fail" in e.value.message
    with pytest.raises(openai.InternalServerError):
        list(oc.completions.create(model="m1", prompt="CRASH", stream=True))
    c = post_raw(fleet.gw, "/v1/completions", {"model": "m1", "prompt": "FAIL", "stream": True})
    r = c.getresponse()
    assert r.status == 400 and r.getheader("Content-Type") == "application/json"
    assert json.loads(r.read())["error"]["type"] == "invalid_request_error"
    c.close()


def play_job(r, jid, chunks):
    """Be the worker of job jid by hand: running, then these chunks."""
    r.hset(f"llmq:job:{{{jid}}}", "state", "running")
    for ch in chunks:
        data = msgpack.packb(ch)
        r.xadd(f"llmq:job:{{{jid}}}:out", {"c": data})
        r.publish(f"llmq:out:{{{jid}}}", data)


def test_refusal_code_of_the_worker_is_kept(fleet):
    """A prompt over the context, refused by the worker at admission with
    status 400 and code context_length_exceeded (docs/protocol.md): the same
    HTTP 400 streamed or not, with the worker's code."""
    refusal = {"seq": 0, "text": "", "ids": [], "finish": "error", "status": 400, "code": "context_length_exceeded",
               "error": "the prompt (600 tokens) is longer than the model's context (512 tokens)",
               "usage": {"prompt_tokens": 600, "completion_tokens": 0}}
    for stream in (True, False):
        before = job_ids(fleet.r)
        c = post_raw(fleet.gw, "/v1/completions", {"model": "idle", "prompt": "x", "stream": stream})
        play_job(fleet.r, new_job(fleet.r, before), [refusal])
        r = c.getresponse()
        assert r.status == 400 and r.getheader("Content-Type") == "application/json", stream
        e = json.loads(r.read())["error"]
        c.close()
        assert e["code"] == "context_length_exceeded" and e["type"] == "invalid_request_error"
        assert "longer than the model's context" in e["message"]


def test_failure_after_output_is_an_sse_error(fleet):
    before = job_ids(fleet.r)
    c = post_raw(fleet.gw, "/v1/completions", {"model": "idle", "prompt": "x", "stream": True})
    jid = new_job(fleet.r, before)
    play_job(fleet.r, jid, [{"seq": 0, "text": "a", "ids": [1]},
                            {"seq": 1, "text": "", "ids": [], "finish": "error", "error": "engine fault",
                             "status": 500, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}])
    r = c.getresponse()
    assert r.status == 200
    data = [e["data"] for e in sse_events(r)]
    c.close()
    assert json.loads(data[0])["choices"][0]["text"] == "a"
    assert json.loads(data[-2])["error"] == {"message": "engine fault", "type": "server_error", "param": None,
                                             "code": 500}
    assert data[-1] == "[DONE]"


# ---------------------------------------------------------------- queue timeout

def test_queue_timeout_cancels_and_answers_503(fleet):
    results = {}

    def run(name, path, body):
        t0 = time.time()
        c = post_raw(fleet.gw, path, body)
        r = c.getresponse()
        results[name] = (r.status, r.getheader("Retry-After"), r.getheader("Content-Type"), r.read(), time.time() - t0)
        c.close()

    msgs = [{"role": "user", "content": "x"}]
    cases = {
        "sync": ("/v1/completions", {"model": "idle", "prompt": "x"}),
        "stream": ("/v1/chat/completions", {"model": "idle", "messages": msgs, "stream": True}),
        # admitted at once, then runs for 1.5 s: past the timeout, and answered in full
        "admitted": ("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 30}),
    }
    before = job_ids(fleet.r)
    ts = [threading.Thread(target=run, args=(k, *v)) for k, v in cases.items()]
    [t.start() for t in ts]
    [t.join(30) for t in ts]
    for name in ("sync", "stream"):
        status, retry, ctype, body, secs = results[name]
        assert status == 503 and retry and int(retry) >= 1, (name, status, body)
        assert ctype == "application/json" and json.loads(body)["error"]["code"] == "queue_timeout"
        assert QUEUE_TIMEOUT <= secs < QUEUE_TIMEOUT + 5, secs
    status, _, _, body, secs = results["admitted"]
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 30 and secs > QUEUE_TIMEOUT
    # the timed-out jobs were cancelled while queued
    idle = [job_hash(fleet.r, j) for j in job_ids(fleet.r) - before]
    assert sorted(h["state"] for h in idle if h["model"] == "idle") == ["cancelled", "cancelled"], idle


# ---------------------------------------------------------------- client gone

def test_client_gone_cancels_the_job(fleet):
    r = fleet.r
    # a stream read for one chunk, then dropped
    before = job_ids(r)
    c = post_raw(fleet.gw, "/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 200, "stream": True})
    resp = c.getresponse()
    assert resp.status == 200
    next(sse_events(resp))
    hang_up(c)
    jid = new_job(r, before)
    h = wait_for(lambda: (lambda h: h if h.get("state") == "cancelled" else None)(job_hash(r, jid)), 10)
    assert int(h["completion_tokens"]) < 50, h

    # a non-streaming request whose client gives up after 0.3 s
    before = job_ids(r)
    c = post_raw(fleet.gw, "/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 200}, timeout=0.3)
    with pytest.raises((socket.timeout, TimeoutError)):
        c.getresponse()
    hang_up(c)
    jid = new_job(r, before)
    h = wait_for(lambda: (lambda h: h if h.get("state") == "cancelled" else None)(job_hash(r, jid)), 10)
    assert int(h["completion_tokens"]) < 50, h

    # still queued (no worker): cancelled at once, not at the queue timeout
    before = job_ids(r)
    c = post_raw(fleet.gw, "/v1/completions", {"model": "idle", "prompt": "x"}, timeout=0.1)
    with pytest.raises((socket.timeout, TimeoutError)):
        c.getresponse()
    hang_up(c)
    jid = new_job(r, before)
    h = wait_for(lambda: (lambda h: h if h.get("state") == "cancelled" else None)(job_hash(r, jid)), 10)
    assert int(h["finished"]) - int(h["created"]) < QUEUE_TIMEOUT * 1000, h

    # the job API's jobs outlive their connections by design
    st, _, body = fleet.gw.request("POST", "/v1/jobs", {"model": "slow", "prompt": "x", "max_tokens": 6})
    assert st == 202
    jid = json.loads(body)["id"]
    c = fleet.gw.connect()
    c.request("GET", f"/v1/jobs/{jid}/events")
    next(sse_events(c.getresponse()))
    hang_up(c)
    h = wait_for(lambda: (lambda h: h if h.get("state") in ("done", "cancelled") else None)(job_hash(r, jid)), 10)
    assert h["state"] == "done" and h["completion_tokens"] == "6"


# ---------------------------------------------------------------- idempotent replay

def test_replay_of_a_finished_job_reports_its_state(fleet):
    body = {"model": "m1", "prompt": "once", "max_tokens": 2}
    hdr = {"Idempotency-Key": "streams-replay-1"}
    st, _, b = fleet.gw.request("POST", "/v1/jobs", body, headers=hdr)
    assert st == 202 and json.loads(b)["status"] == "queued"
    jid = json.loads(b)["id"]
    wait_for(lambda: job_hash(fleet.r, jid).get("state") == "done")
    st, h, b = fleet.gw.request("POST", "/v1/jobs", body, headers=hdr)
    j = json.loads(b)
    assert st == 202 and h["idempotent-replayed"] == "true" and j["id"] == jid
    assert j["status"] == "done"
    assert j["created"] == int(job_hash(fleet.r, jid)["created"])
