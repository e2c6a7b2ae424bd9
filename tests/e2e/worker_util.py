"""Helpers for end-to-end tests of llmq-worker against a real redis-server:
submit requests straight into Redis with redis-py (a client we did not
write), start/stop real worker processes, and read a job's output stream."""
import os
import signal
import subprocess
import time

import msgpack
import redis

from llmqtest import BUILD


def submit(r, jid, model="stories", **req):
    """HSET the job hash and XADD the request, as docs/protocol.md says."""
    body = {"v": 1, "id": jid, "model": model}
    body.update(req)
    pipe = r.pipeline(transaction=True)
    pipe.hset(f"llmq:job:{{{jid}}}", mapping={"state": "queued", "model": model,
                                             "created": int(time.time() * 1000), "attempts": 0})
    pipe.xadd(f"llmq:req:{model}", {"id": jid, "p": msgpack.packb(body)})
    pipe.execute()


def chunks(r, jid):
    return [msgpack.unpackb(e[1][b"c"]) for e in r.xrange(f"llmq:job:{{{jid}}}:out")]


def job(r, jid):
    return {k.decode(): v.decode() for k, v in r.hgetall(f"llmq:job:{{{jid}}}").items()}


def wait_final(r, jids, timeout=60):
    deadline = time.time() + timeout
    pending = set(jids)
    while pending and time.time() < deadline:
        for jid in list(pending):
            if job(r, jid).get("state") in ("done", "failed", "cancelled", "expired"):
                pending.discard(jid)
        time.sleep(0.05)
    assert not pending, f"jobs not finished: {sorted(pending)[:5]}"


class Worker:
    def __init__(self, model_dir, redis_url, name="stories", log=None, *extra):
        self.args = [str(BUILD / "llmq-worker"), "--model", str(model_dir), "--model-name", name,
                     "--redis", redis_url, *map(str, extra)]
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def term(self, timeout=60):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def connect(url):
    return redis.Redis.from_url(url)


def text_of(cs):
    return "".join(c["text"] for c in cs)


def ids_of(cs):
    return [t for c in cs for t in c["ids"]]


def assert_clean_stream(cs):
    """seq 0, 1, 2, ... without gap or repeat, and exactly one final chunk, last."""
    assert [c["seq"] for c in cs] == list(range(len(cs)))
    assert sum(1 for c in cs if c.get("finish")) == 1 and cs[-1].get("finish")


class Gateway:
    """The real llmq-gateway on a free port.  It serves "stories" (--models)
    unless extra names --models: the suites submit before their workers'
    first heartbeat, and a model no heartbeat names is otherwise a 404."""

    def __init__(self, redis_url, log, *extra):
        from llmqtest import free_port
        import http.client
        if "--models" not in extra:
            extra = (*extra, "--models", "stories")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(BUILD / "llmq-gateway"), "--redis", redis_url, "--listen",
                                      f"127.0.0.1:{self.port}", *map(str, extra)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gateway did not become ready")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def sse_completion(port, body, timeout=120):
    """POST /v1/completions with stream: true; returns (texts, finish_reason, saw_done)."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    texts, finish, done = [], None, False
    for raw in r:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        ch = json.loads(line[6:])["choices"][0]
        texts.append(ch["text"])
        finish = ch["finish_reason"] or finish
    c.close()
    return texts, finish, done
