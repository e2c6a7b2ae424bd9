"""Prefix affinity across worker groups (issue 20 "In the fleet";
docs/protocol.md "Affinity").

Two real llmq-workers (consumers A and B, the synthetic engine on the
stories260K tokenizer: routing is all in Redis, the engine does not matter)
behind a real redis-server and, for the keys the gateway computes, a real
llmq-gateway.  The affinity keys are computed here again from
docs/protocol.md in a few lines of Python (not from llmq's C), so a test
also checks that a direct client writing the field `a` itself agrees with
the gateway.
  - requests whose keys name a group run on it, the other group reading
    them or not;
  - an owner that stopped after saying it had room: its entries wait parked
    for the bound (counted by the lanes' pending entries meanwhile, so KEDA
    still sees them), then the other group takes them, and the key follows;
  - a prefix_key pins a conversation to the group that served it last, and
    follows the other when that one dies;
  - each group's /metrics counts what its pulls did: entries parked for the
    other group, taken over from it, claimed from its own parking, and hits.
"""
import http.client
import json
import os
import signal
import struct
import time

import msgpack
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, connect, job, wait_final

MODEL = "stories"
WAIT_MS = 1500


# --------------------------------------------------------------- the keys, from docs/protocol.md
def fnv(data, h=0xcbf29ce484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def child(parent, tag, data):
    return fnv(struct.pack("<Q", parent) + tag + data)


def root(salt=None, tools=None):
    h = fnv(b"llmq-affinity-1")
    if salt is not None:
        h = child(h, b"s", salt.encode())
    if tools is not None:
        h = child(h, b"t", tools.encode())
    return h


def keys_for(messages=None, prompt=None, ids=None, prefix_key=None, salt=None):
    r = root(salt)
    chain, h = [], r
    if messages is not None:
        for m in messages:
            h = child(h, b"m", m["role"].encode() + b"\0" + m["content"].encode() + b"\0")
            chain.append(h)
    elif prompt is not None:
        b = prompt.encode()
        for o in range(0, len(b) - 255, 256):
            h = child(h, b"p", b[o:o + 256])
            chain.append(h)
    elif ids is not None:
        for o in range(0, len(ids) - 63, 64):
            h = child(h, b"i", struct.pack("<64i", *ids[o:o + 64]))
            chain.append(h)
    chain = chain[-32:]
    if prefix_key:
        chain.append(child(r, b"k", prefix_key.encode()))
    return ["%016x" % k for k in chain]


# --------------------------------------------------------------- the fleet
def start_worker(shared_dir, url, tmp, name, *extra):
    """A worker of the group `name`; its /metrics on w.metrics_port."""
    port = free_port()
    w = Worker(shared_dir / "models" / "stories260K", url, MODEL, tmp / f"{name}.log", "--backend", "synthetic",
                  "--synthetic-rate", 200, "--max-num-seqs", 8, "--consumer", name, "--affinity-wait-ms", WAIT_MS,
                  "--affinity-slack", 100, "--metrics-port", port, *extra)
    w.metrics_port = port
    return w


AFF = ("parked", "takeovers", "claimed", "hits")


def aff_metrics(w):
    """{parked, takeovers, claimed, hits} from a worker's /metrics, read by
    Prometheus' own parser (llmq:affinity_<name>_total, model_name label)."""
    from prometheus_client.parser import text_string_to_metric_families
    c = http.client.HTTPConnection("127.0.0.1", w.metrics_port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
           if s.labels.get("model_name") == MODEL}
    return {n: got[f"llmq:affinity_{n}_total"] for n in AFF}


@pytest.fixture
def fleet(tmp_path, shared_dir):
    srv = RedisServer(tmp_path, free_port()).start()
    r = connect(srv.url)
    ws = {}
    try:
        for name in ("A", "B"):
            ws[name] = start_worker(shared_dir, srv.url, tmp_path, name)
        deadline = time.time() + 30  # both pull (their room records are there)
        while time.time() < deadline and r.hlen(f"llmq:aff:{MODEL}#groups") < 2:
            time.sleep(0.05)
        assert r.hlen(f"llmq:aff:{MODEL}#groups") == 2, "the workers never pulled"
        yield dict(r=r, url=srv.url, ws=ws, tmp=tmp_path)
    finally:
        for w in ws.values():
            try:
                os.kill(w.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            w.stop()
        srv.stop()


n_jobs = 0


def submit(r, keys, prompt="Once upon a time", max_tokens=2):
    """A direct client: job hash + entry with the field `a` (docs/protocol.md)."""
    global n_jobs
    n_jobs += 1
    jid = f"aff{n_jobs}"
    body = dict(v=1, id=jid, model=MODEL, prompt=prompt, max_tokens=max_tokens, ignore_eos=True)
    fields = {"id": jid, "p": msgpack.packb(body)}
    if keys:
        fields["a"] = " ".join(keys)
    pipe = r.pipeline(transaction=True)
    pipe.hset(f"llmq:job:{{{jid}}}", mapping={"state": "queued", "model": MODEL,
                                             "created": int(time.time() * 1000), "attempts": 0})
    pipe.xadd(f"llmq:req:{MODEL}", fields)
    pipe.execute()
    return jid


def owner(r, key):
    v = r.get(f"llmq:aff:{MODEL}#{key}")
    return v.decode() if v else None


def backlog(r):
    """What KEDA's triggers read, summed over the lanes: lag + pending."""
    n = 0
    for lane in ("", "#high", "#low"):
        for g in r.xinfo_groups(f"llmq:req:{MODEL}{lane}"):
            n += (g.get("lag") or 0) + g["pending"]
    return n


def test_shared_prefix_lands_on_its_group(fleet):
    """The first request of a prefix runs anywhere and its keys name that
    group; every later request sharing the prefix (with a longer key of its
    own, unknown) runs there, four at a time so that both groups read."""
    r = fleet["r"]
    base = keys_for(prompt="x" * 512)  # two units
    first = submit(r, base)
    wait_final(r, [first])
    g = job(r, first)["worker"]
    assert owner(r, base[-1]) == g
    for rnd in range(4):
        jids = [submit(r, base + ["%016x" % (1000 * rnd + i)]) for i in range(4)]
        wait_final(r, jids)
        assert [job(r, j)["worker"] for j in jids] == [g] * 4, rnd
    # keys no one holds: both groups run them, each holds its own
    jids = [submit(r, ["%016x" % (99000 + i)]) for i in range(16)]
    wait_final(r, jids)
    assert {job(r, j)["worker"] for j in jids} == {"A", "B"}
    # the 16 entries that share the prefix: each either read by the owner
    # (a hit) or parked for it by the other group and claimed by it
    other = "B" if g == "A" else "A"
    mg, mo = aff_metrics(fleet["ws"][g]), aff_metrics(fleet["ws"][other])
    assert mg["hits"] + mg["claimed"] == 16, (mg, mo)
    assert mo["parked"] == mg["claimed"], (mg, mo)
    assert (mg["parked"], mg["takeovers"], mo["takeovers"], mo["claimed"], mo["hits"]) == (0, 0, 0, 0, 0), (mg, mo)


def test_stopped_owner_loses_only_the_wait(fleet):
    """The owner stops right after saying it has room (SIGSTOP, its record
    rewritten fresh): the other group parks the owner's entries for it, they
    stay visible as pending meanwhile, and after the bound the other group
    takes them, runs them and holds their keys from then on."""
    r, ws = fleet["r"], fleet["ws"]
    k = keys_for(prompt="y" * 256)
    first = submit(r, k)
    wait_final(r, [first])
    g = job(r, first)["worker"]
    other = "B" if g == "A" else "A"
    os.kill(ws[g].proc.pid, signal.SIGSTOP)
    time.sleep(0.3)  # whatever it sent is in
    r.hset(f"llmq:aff:{MODEL}#groups", g, f"8 {int(time.time() * 1000)}")
    t0 = time.time()
    jids = [submit(r, k + ["%016x" % (5000 + i)]) for i in range(3)]
    time.sleep(0.5)
    assert backlog(r) == 3  # parked: pending under "@<owner>", still counted
    pend = r.xpending_range(f"llmq:req:{MODEL}", "workers", "-", "+", 10)
    assert {p["consumer"].decode() for p in pend} == {"@" + g}
    wait_final(r, jids, timeout=30)
    took = time.time() - t0
    assert [job(r, j)["worker"] for j in jids] == [other] * 3
    assert WAIT_MS / 1000 <= took < WAIT_MS / 1000 + 5, took
    assert owner(r, k[-1]) == other
    assert backlog(r) == 0
    m = aff_metrics(ws[other])  # parked for the stopped owner, then taken over
    assert m == dict(parked=3, takeovers=3, claimed=0, hits=0), m


def chat(port, body, path="/v1/completions"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = c.getresponse()
    data = json.loads(resp.read())
    assert resp.status == 200, data
    return data


def test_gateway_keys_and_prefix_key(fleet, tmp_path):
    """Through the gateway: its keys are those computed here (the worker that
    ran the request holds each), a prefix_key pins unrelated prompts to the
    group that ran the first, and a dead group's key moves to the live one."""
    r, ws = fleet["r"], fleet["ws"]
    gw = Gateway(fleet["url"], tmp_path / "gw.log")
    try:
        prompt = "The cat sat on the mat. " * 30  # 720 bytes: two units
        chat(gw.port, dict(model=MODEL, prompt=prompt, max_tokens=2, cache_salt="t1"))
        ks = keys_for(prompt=prompt, salt="t1")
        assert len(ks) == 2
        holders = {owner(r, k) for k in ks}
        assert holders in ({"A"}, {"B"}), holders
        msgs = [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "A cat?"},
                {"role": "assistant", "content": "Once a cat sat."}, {"role": "user", "content": "And then?"}]
        chat(gw.port, dict(model=MODEL, messages=msgs, max_tokens=2), "/v1/chat/completions")
        ks = keys_for(messages=msgs)
        assert len(ks) == 4 and {owner(r, k) for k in ks} in ({"A"}, {"B"}), [owner(r, k) for k in ks]
        ids = [(7 * i) % 500 + 3 for i in range(130)]  # two units of 64 ids
        chat(gw.port, dict(model=MODEL, prompt=ids, max_tokens=2))
        ks = keys_for(ids=ids)
        assert len(ks) == 2 and {owner(r, k) for k in ks} in ({"A"}, {"B"}), [owner(r, k) for k in ks]
        pk = keys_for(prefix_key="conversation-7")[-1]
        chat(gw.port, dict(model=MODEL, prompt="Lily went to the park", max_tokens=2, prefix_key="conversation-7"))
        g = owner(r, pk)
        assert g in ("A", "B")
        for i in range(8):  # unrelated prompts, one after the other: all on g
            chat(gw.port, dict(model=MODEL, prompt=f"Tom had a dog {i}", max_tokens=2, prefix_key="conversation-7"))
            assert owner(r, pk) == g, i
        for bad in (7, "x" * 257):  # a string of at most 256 bytes
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
            c.request("POST", "/v1/completions", json.dumps(dict(model=MODEL, prompt="a", prefix_key=bad)),
                      {"Content-Type": "application/json"})
            resp = c.getresponse()
            assert resp.status == 400 and json.loads(resp.read())["error"]["param"] == "prefix_key"
        ws[g].kill()
        time.sleep(1.2)  # its record is stale: no group parks for it
        chat(gw.port, dict(model=MODEL, prompt="Then it rained", max_tokens=2, prefix_key="conversation-7"))
        assert owner(r, pk) == ("B" if g == "A" else "A")
    finally:
        gw.stop()


def test_llmq_submit_writes_the_keys(fleet):
    """libllmq (`llmq submit`) writes the same field `a` as computed here
    (a model no worker serves, so the entry stays to be read)."""
    from llmqtest import BUILD
    import subprocess
    r = fleet["r"]
    prompt = "ab" * 300  # two units of 256 bytes
    subprocess.run([str(BUILD / "llmq"), "submit", "--redis", fleet["url"], "--model", "nobody", "--prompt", prompt,
                    "--force"], check=True, capture_output=True)
    (_, fields), = r.xrange("llmq:req:nobody")
    assert fields[b"a"].decode() == " ".join(keys_for(prompt=prompt))


def test_consumer_may_not_look_like_a_parking_name():
    """A consumer "@x" would have its own entries taken as parked ones."""
    from llmqtest import BUILD
    import subprocess
    p = subprocess.run([str(BUILD / "llmq-worker"), "--model", "/nonexistent", "--model-name", MODEL, "--consumer",
                        "@x"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "may not begin with '@'" in p.stderr
