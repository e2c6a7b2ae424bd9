"""A client that goes away cancels its job, as vLLM aborts it: the real
llmq-worker on stories260K behind the real llmq-gateway, 8 clients asking for
500 tokens each (4 streaming, 4 not) that hang up as soon as every job has
begun to generate.  Each job must end `cancelled`, far short of 500 tokens
(uncancelled, each runs to 500: about 1.5 s alone on this model).

The clients hang up mid-generation, once each job has output, rather than
after a fixed time, so that the check does not depend on the machine's speed.
They shut the socket down: a bare close() may leave the descriptor open while
some object (a response, a traceback) still refers to it."""
import http.client
import json
import socket
import threading
import time

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


def test_disconnected_clients_cancel_their_jobs(redis_server, stories, tmp_path):
    d, _ = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    r = connect(redis_server.url)
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
        gw.stop()
        w.stop()
