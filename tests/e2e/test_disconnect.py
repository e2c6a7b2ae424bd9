"""The life of an OpenAI request against the real llmq-worker on stories260K
behind the real llmq-gateway (one fleet for the module).

A client that goes away cancels its job, as vLLM aborts it: 8 clients asking for
500 tokens each (4 streaming, 4 not) that hang up as soon as every job has
begun to generate.  Each job must end `cancelled`, far short of 500 tokens
(uncancelled, each runs to 500: about 1.5 s alone on this model).

The clients hang up mid-generation, once each job has output, rather than
after a fixed time, so that the check does not depend on the machine's speed.
They shut the socket down: a bare close() may leave the descriptor open while
some object (a response, a traceback) still refers to it.

A prompt over the model's context, refused by the worker at admission, is the
same HTTP 400 (`context_length_exceeded`) streamed or not: the stream's
headers wait for the job's first event."""
import http.client
import json
import socket
import threading
import time

import openai
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, connect, job, wait_final

N = 8
MAX_TOKENS = 500


def job_ids(r):
    return {k.decode()[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}") if k.endswith(b"}")}


def client(port, body, hang_up):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        hang_up.wait(60)
    finally:
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()


@pytest.fixture(scope="module")
def fleet(shared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("disconnect")
    srv = RedisServer(d, free_port()).start()
    w = gw = None
    try:
        w = Worker(shared_dir / "models" / "stories260K", srv.url, "stories", d / "w.log")
        gw = Gateway(srv.url, d / "gw.log")
        yield gw, connect(srv.url)
    finally:
        if gw:
            gw.stop()
        if w:
            w.stop()
        srv.stop()


def test_disconnected_clients_cancel_their_jobs(fleet):
    gw, r = fleet
    hang_up = threading.Event()
    ts = []
    try:
        before = job_ids(r)
        ts = [threading.Thread(target=client,
                               args=(gw.port, {"model": "stories", "prompt": "Once upon a time", "ignore_eos": True,
                                               "max_tokens": MAX_TOKENS, "stream": i % 2 == 0}, hang_up))
              for i in range(N)]
        [t.start() for t in ts]
        deadline = time.time() + 60
        jids = []
        while time.time() < deadline:
            jids = sorted(job_ids(r) - before)
            if len(jids) == N and all(r.xlen(f"llmq:job:{{{j}}}:out") > 0 for j in jids):
                break
            time.sleep(0.005)
        hang_up.set()
        [t.join(30) for t in ts]
        assert len(jids) == N
        wait_final(r, jids, timeout=120)
        hashes = [job(r, j) for j in jids]
        assert [h["state"] for h in hashes] == ["cancelled"] * N, hashes
        tokens = [int(h.get("completion_tokens", 0)) for h in hashes]
        assert max(tokens) < MAX_TOKENS and sum(tokens) < N * MAX_TOKENS // 2, tokens
    finally:
        hang_up.set()


def test_prompt_over_the_context_is_a_400_streamed_too(fleet):
    gw, _ = fleet
    c = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            r = c.completions.create(model="stories", prompt=[1] * 600, max_tokens=4, stream=stream)
            list(r) if stream else None
        assert e.value.status_code == 400 and e.value.body["code"] == "context_length_exceeded", stream
