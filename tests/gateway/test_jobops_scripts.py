"""The Lua scripts of common/jobops.c (admission by a worker, cancel) run
against a real redis-server: their text is read from the C source, so what
is tested is what the gateway, libllmq and the worker send."""
import ast
import re

import msgpack
import redis

from gwtest import ROOT


def lua(name):
    src = (ROOT / "common" / "jobops.c").read_text()
    m = re.search(r"static const char %s\[\] =\n((?:\s*\".*\"[;\n])+)" % name, src)
    body = "".join(ast.literal_eval(line.strip().rstrip(";")) for line in m.group(1).splitlines() if line.strip())
    assert "redis.call" in body
    return body


def admit(r, jid, seed=7, worker="w0"):
    return r.eval(lua("admit_lua"), 1, f"llmq:job:{{{jid}}}", "m1", worker, 1000, seed)


def cancel(r, jid):
    chunk = msgpack.packb({"seq": 0, "text": "", "ids": [], "finish": "cancelled",
                           "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    return r.eval(lua("cancel_lua"), 2, f"llmq:job:{{{jid}}}", f"llmq:job:{{{jid}}}:out", f"llmq:out:{{{jid}}}",
                  "llmq:cancel", jid, 2000, 60, chunk)


def test_admit(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.hset("llmq:job:{a}", mapping={"state": "queued", "model": "m1", "created": 1, "attempts": 0})
    assert admit(r, "a", seed=7) == [1, 1, b"7"]
    h = r.hgetall("llmq:job:{a}")
    assert h[b"state"] == b"running" and h[b"worker"] == b"w0" and h[b"started"] == b"1000"
    # a resume on another worker keeps the first seed and start time, counts the attempt
    assert admit(r, "a", seed=99, worker="w1") == [1, 2, b"7"]
    assert r.hget("llmq:job:{a}", "started") == b"1000" and r.hget("llmq:job:{a}", "worker") == b"w1"
    # bare XADD job: the hash is created
    assert admit(r, "bare", seed=5) == [1, 1, b"5"]
    assert r.hget("llmq:job:{bare}", "model") == b"m1"
    # cancel flag → code 2; final state → code 0
    r.hset("llmq:job:{a}", "cancel", "1")
    assert admit(r, "a")[0] == 2
    r.hset("llmq:job:{a}", "state", "done")
    assert admit(r, "a")[0] == 0


def test_cancel(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    assert cancel(r, "none") == 0
    r.hset("llmq:job:{q}", mapping={"state": "queued"})
    assert cancel(r, "q") == 2
    h = r.hgetall("llmq:job:{q}")
    assert h[b"state"] == b"cancelled" and h[b"finish_reason"] == b"cancelled" and h[b"cancel"] == b"1"
    assert 0 < r.ttl("llmq:job:{q}") <= 60 and 0 < r.ttl("llmq:job:{q}:out") <= 60
    (_, fields), = r.xrange("llmq:job:{q}:out")
    assert msgpack.unpackb(fields[b"c"])["finish"] == "cancelled"
    assert admit(r, "q")[0] == 0  # the worker that pulls it later drops it
    assert cancel(r, "q") == 3
    r.hset("llmq:job:{run}", mapping={"state": "running"})
    assert cancel(r, "run") == 1
    assert r.hget("llmq:job:{run}", "cancel") == b"1" and r.hget("llmq:job:{run}", "state") == b"running"
    assert not r.exists("llmq:job:{run}:out")
