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
