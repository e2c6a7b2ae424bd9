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
    # a script is string literals, and macros (#define NAME \ "..." \ ...) of them
    macros = {d.group(1): "".join(ast.literal_eval(part.strip()) for part in d.group(2).split("\\\n"))
              for d in re.finditer(r"#define ([A-Z_]+_LUA) \\\n((?:\s*\".*\"(?: \\)?\n)+)", src)}
    m = re.search(r"static const char %s\[\] =\n((?:\s*(?:\".*\"|[A-Z_]+_LUA)[;\n])+)" % name, src)
    body = "".join(macros[line.strip()] if line.strip() in macros else ast.literal_eval(line.strip().rstrip(";"))
                   for line in m.group(1).splitlines() if line.strip())
    assert "redis.call" in body or "redis.pcall" in body
    return body


def admit(r, jid, seed=7, worker="w0"):
    return r.eval(lua("admit_lua"), 2, f"llmq:job:{{{jid}}}", f"llmq:job:{{{jid}}}:out", "m1", worker, 1000, seed)


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


def test_admit_returns_the_output_so_far(redis_server):
    """The resume reads the output stream in the admission's own round trip:
    the chunks follow {code, attempts, seed}, in stream order, for codes 1 and
    2; entries without a `c` field are not chunks."""
    r = redis.Redis.from_url(redis_server.url)
    r.hset("llmq:job:{o}", mapping={"state": "running", "model": "m1", "created": 1, "attempts": 1, "seed": 3})
    c0, c1 = msgpack.packb({"seq": 0, "text": "a", "ids": [5]}), msgpack.packb({"seq": 1, "text": "b", "ids": [6]})
    r.xadd("llmq:job:{o}:out", {"c": c0})
    r.xadd("llmq:job:{o}:out", {"x": "not a chunk"})
    r.xadd("llmq:job:{o}:out", {"c": c1})
    assert admit(r, "o") == [1, 2, b"3", c0, c1]
    r.hset("llmq:job:{o}", "cancel", "1")
    assert admit(r, "o") == [2, 3, b"3", c0, c1]
    r.hset("llmq:job:{o}", "state", "cancelled")
    assert admit(r, "o") == [0, 0, b""]  # final: nothing to resume
    assert admit(r, "fresh") == [1, 1, b"7"]  # no stream yet: no chunks


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


def chunks(r, writes):
    """One call of the chunk script for several jobs: writes = [(jid, attempt, chunk bytes)]."""
    keys = [k for jid, _, _ in writes for k in (f"llmq:job:{{{jid}}}", f"llmq:job:{{{jid}}}:out")]
    args = [a for jid, attempt, c in writes for a in (attempt, f"llmq:out:{{{jid}}}", c)]
    return r.eval(lua("chunks_lua"), len(keys), *keys, *args)


def chunk(r, jid, attempt, seq):
    (res,) = chunks(r, [(jid, attempt, msgpack.packb({"seq": seq, "text": f"t{seq}", "ids": [seq]}))])
    return res


def finish(r, jid, attempt, entry="", dead=False, state="done", error=""):
    c = msgpack.packb({"seq": 99, "text": "", "ids": [], "finish": "length"})
    keys = [f"llmq:job:{{{jid}}}", f"llmq:job:{{{jid}}}:out", "llmq:req:m1"] + (["llmq:dead:m1"] if dead else [])
    return r.eval(lua("finish_lua"), len(keys), *keys, attempt, f"llmq:out:{{{jid}}}", c, "workers", entry, 60,
                  state, "length", 3000, 5, 7, error, jid)


def test_writes_are_fenced_on_the_admission(redis_server):
    """A worker that stalled while another admitted the job again writes
    nothing more: not a chunk, not the end (common/jobops.h, "Fencing")."""
    r = redis.Redis.from_url(redis_server.url)
    r.hset("llmq:job:{f}", mapping={"state": "queued", "model": "m1", "created": 1, "attempts": 0})
    assert admit(r, "f", worker="w0")[1] == 1
    assert chunk(r, "f", 1, 0) == 1
    assert admit(r, "f", worker="w1")[1] == 2  # w0 stalled past claim-idle: w1 took the job over
    assert chunk(r, "f", 1, 1) == 0 and finish(r, "f", 1) == 0  # w0, running again: refused
    assert r.xlen("llmq:job:{f}:out") == 1 and r.hget("llmq:job:{f}", "state") == b"running"
    assert chunk(r, "f", 2, 1) == 1
    r.xadd("llmq:req:m1", {"id": "f"}, id="5-1")
    r.xgroup_create("llmq:req:m1", "workers", id="0")
    r.xreadgroup("workers", "w1", {"llmq:req:m1": ">"})
    assert finish(r, "f", 2, entry="5-1") == 1
    h = r.hgetall("llmq:job:{f}")
    assert h[b"state"] == b"done" and h[b"completion_tokens"] == b"7" and b"error" not in h
    assert r.xpending("llmq:req:m1", "workers")["pending"] == 0
    assert 0 < r.ttl("llmq:job:{f}") <= 60 and 0 < r.ttl("llmq:job:{f}:out") <= 60
    assert [msgpack.unpackb(f[b"c"])["seq"] for _, f in r.xrange("llmq:job:{f}:out")] == [0, 1, 99]
    assert chunk(r, "f", 2, 2) == 0 and finish(r, "f", 2) == 0  # nothing after the end
    assert r.xlen("llmq:job:{f}:out") == 3


def test_chunks_of_many_jobs_in_one_call_are_fenced_one_by_one(redis_server):
    """A worker writes a step's chunks of every job in one script call: each
    job's fence is checked on its own, and a job whose write is refused
    (fenced out, or its keys of another type) is the only one not written:
    the others of the same call are appended and published."""
    r = redis.Redis.from_url(redis_server.url)
    for jid, attempts in (("b1", 1), ("b2", 2), ("b3", 1), ("b4", 3)):
        r.hset(f"llmq:job:{{{jid}}}", mapping={"state": "running", "model": "m1", "created": 1, "attempts": attempts})
    r.set("llmq:job:{b3}:out", "not a stream")  # its XADD fails with WRONGTYPE
    sub = r.pubsub()
    sub.subscribe(*(f"llmq:out:{{b{i}}}" for i in range(1, 5)))
    for _ in range(4):
        assert sub.get_message(timeout=5)["type"] == "subscribe"
    c = {jid: msgpack.packb({"seq": 0, "text": jid + " x y", "ids": [1, 2, 3]}) for jid in ("b1", "b2", "b3", "b4")}
    res = chunks(r, [("b1", 1, c["b1"]), ("b2", 1, c["b2"]), ("b3", 1, c["b3"]), ("b4", 3, c["b4"])])
    assert res[0] == 1 and res[1] == 0 and res[3] == 1  # b2: admitted again since (attempts 2), refused
    assert isinstance(res[2], redis.ResponseError) and "WRONGTYPE" in str(res[2])
    assert [f[b"c"] for _, f in r.xrange("llmq:job:{b1}:out")] == [c["b1"]]
    assert [f[b"c"] for _, f in r.xrange("llmq:job:{b4}:out")] == [c["b4"]]
    assert not r.exists("llmq:job:{b2}:out") and r.type("llmq:job:{b3}:out") == b"string"
    got = [sub.get_message(timeout=5) for _ in range(2)]
    assert [(m["channel"], m["data"]) for m in got] == [(b"llmq:out:{b1}", c["b1"]), (b"llmq:out:{b4}", c["b4"])]
    assert sub.get_message(timeout=0.05) is None  # nothing for b2 or b3
    # a job hash of another type: an error for that job alone
    r.delete("llmq:job:{b3}:out")
    r.delete("llmq:job:{b3}")
    r.rpush("llmq:job:{b3}", "x")
    res = chunks(r, [("b3", 1, c["b3"]), ("b1", 1, c["b1"])])
    assert isinstance(res[0], redis.ResponseError) and res[1] == 1
    assert r.xlen("llmq:job:{b1}:out") == 2 and not r.exists("llmq:job:{b3}:out")


def test_finish_of_an_entry_never_admitted(redis_server):
    """Undecodable entries end their job only while it is queued (or has no
    hash yet); a junk entry reusing the id of a job that ended or runs
    elsewhere is acked and recorded as dead, the job itself left alone."""
    r = redis.Redis.from_url(redis_server.url)
    r.xgroup_create("llmq:req:m1", "workers", id="0", mkstream=True)
    for jid in ("q", "gone", "ended"):
        r.xadd("llmq:req:m1", {"id": jid})
    e_q, e_gone, e_ended = [e[0].decode() for e in r.xreadgroup("workers", "w", {"llmq:req:m1": ">"})[0][1]]
    r.hset("llmq:job:{q}", mapping={"state": "queued"})
    assert finish(r, "q", 0, entry=e_q, dead=True, state="failed", error="cannot decode") == 1
    assert r.hget("llmq:job:{q}", "state") == b"failed" and r.hget("llmq:job:{q}", "error") == b"cannot decode"
    assert finish(r, "gone", 0, entry=e_gone, state="failed", error="bad") == 1  # a bare XADD: no hash yet
    assert r.hget("llmq:job:{gone}", "state") == b"failed"
    r.hset("llmq:job:{ended}", mapping={"state": "cancelled"})
    assert finish(r, "ended", 0, entry=e_ended, dead=True, state="failed", error="cannot decode") == 2
    assert r.hget("llmq:job:{ended}", "state") == b"cancelled" and not r.exists("llmq:job:{ended}:out")
    assert r.xpending("llmq:req:m1", "workers")["pending"] == 0
    assert [f[b"id"] for _, f in r.xrange("llmq:dead:m1")] == [b"q", b"ended"]


def test_bounded_submission(redis_server):
    """Check and submit in one step: the bound is exact however submissions
    interleave, and a refused one writes nothing."""
    r = redis.Redis.from_url(redis_server.url)
    r.xgroup_create("llmq:req:m1", "workers", id="0", mkstream=True)

    def submit(jid, bound, stream="llmq:req:m1"):
        lanes = [stream + "#high", stream, stream + "#low"]
        return r.eval(lua("submit_lua"), 5, f"llmq:job:{{{jid}}}", stream, *lanes, "m1", 1000, jid, b"p",
                      bound, "workers")
    assert [submit(f"b{i}", 3) for i in range(5)] == [[1, 0], [1, 1], [1, 2], [0, 3], [0, 3]]
    assert r.xlen("llmq:req:m1") == 3 and not r.exists("llmq:job:{b3}")
    assert r.hgetall("llmq:job:{b0}") == {b"state": b"queued", b"model": b"m1", b"created": b"1000",
                                          b"attempts": b"0"}
    (_, fields), = r.xrange("llmq:req:m1", count=1)
    assert fields == {b"id": b"b0", b"p": b"p"}
    r.xreadgroup("workers", "w", {"llmq:req:m1": ">"}, count=2)  # a worker takes two: room for two more
    assert [submit(f"c{i}", 3) for i in range(3)] == [[1, 1], [1, 2], [0, 3]]
    # no stream, then a stream without the group: its length counts
    assert [submit(f"d{i}", 2, "llmq:req:m2") for i in range(3)] == [[1, 0], [1, 1], [0, 2]]


LANES = ["llmq:req:m1#high", "llmq:req:m1", "llmq:req:m1#low"]  # highest first (common/keys.h)


def test_bound_counts_every_lane(redis_server):
    """--max-queue bounds the model, not one lane: entries waiting in any
    lane count, and the entry goes to the lane it names."""
    r = redis.Redis.from_url(redis_server.url)
    assert r.eval(lua("group_lua"), 3, *LANES, "workers") == 3

    def submit(jid, lane, bound=3):
        return r.eval(lua("submit_lua"), 5, f"llmq:job:{{{jid}}}", LANES[lane], *LANES, "m1", 1000, jid, b"p",
                      bound, "workers")
    assert [submit("h0", 0), submit("l0", 2), submit("d0", 1), submit("h1", 0)] == [[1, 0], [1, 1], [1, 2], [0, 3]]
    assert [r.xlen(k) for k in LANES] == [1, 1, 1]
    r.xreadgroup("workers", "w", {LANES[2]: ">"})  # the low lane's entry is taken: room for one
    assert submit("h1", 0) == [1, 2]


def test_group_on_every_lane(redis_server):
    """One script makes the group on every lane; BUSYGROUP only when all
    were there (so callers that accept BUSYGROUP work unchanged)."""
    r = redis.Redis.from_url(redis_server.url)
    r.xgroup_create(LANES[1], "workers", id="0", mkstream=True)  # a deployment from before the lanes
    assert r.eval(lua("group_lua"), 3, *LANES, "workers") == 2
    assert all(r.xinfo_groups(k)[0]["name"] == b"workers" for k in LANES)
    try:
        r.eval(lua("group_lua"), 3, *LANES, "workers")
        assert False, "expected BUSYGROUP"
    except redis.ResponseError as e:
        assert str(e).startswith("BUSYGROUP")


def read_lanes(r, count, first=-1, consumer="w"):
    """The worker's pull: {lane: [entry ids]}, and the lanes where entries remain."""
    rep = r.eval(lua("read_lanes_lua"), 3, *LANES, "workers", consumer, count, first + 1)
    assert len(rep) == 4
    return [[dict(zip(e[1][::2], e[1][1::2]))[b"id"].decode() for e in rep[lane]] for lane in range(3)], rep[3]


def test_read_lanes_highest_first(redis_server):
    """At most `count` entries, from the highest lane first; the guard's
    lane gives one entry before the others; `more` says which lanes still
    hold unread entries."""
    r = redis.Redis.from_url(redis_server.url)
    r.eval(lua("group_lua"), 3, *LANES, "workers")
    for jid in ["l0", "l1"]:
        r.xadd(LANES[2], {"id": jid})
    for jid in ["d0"]:
        r.xadd(LANES[1], {"id": jid})
    for jid in ["h0", "h1", "h2"]:
        r.xadd(LANES[0], {"id": jid})
    assert read_lanes(r, 2) == ([["h0", "h1"], [], []], [1, 1, 1])
    assert read_lanes(r, 1, first=2) == ([[], [], ["l0"]], [1, 1, 1])  # the starvation guard's pick
    assert read_lanes(r, 3) == ([["h2"], ["d0"], ["l1"]], [0, 0, 0])
    assert read_lanes(r, 3) == ([[], [], []], [0, 0, 0])
    assert r.xpending(LANES[2], "workers")["pending"] == 2  # read entries are pending, to be acked on their lane
    r.delete(LANES[1])
    try:
        read_lanes(r, 1)
        assert False, "expected NOGROUP"
    except redis.ResponseError as e:
        assert "NOGROUP" in str(e)
