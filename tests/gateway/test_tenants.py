"""Tenants (issue 23, items 4, 8 and 9): with API keys a job is its
submitting key's, Idempotency-Keys are namespaced per key and live no longer
than the job they name, and a key's priorities, unfinished jobs and tokens
per minute are bounded.  One redis-server and one gateway (keys A and B, an admin key) for
the module; every check uses its own jobs."""
import hashlib
import json

import pytest
import redis

from gwtest import Gateway
from llmqtest import RedisServer, free_port
from test_jobops_scripts import admit, finish

KEY_A, KEY_B, KEY_ADMIN = "sk-tenant-a-0123456789", "sk-tenant-b-9876543210", "sk-admin-5555"
LIMIT = 4  # --key-max-jobs of the module's gateway
TPM = 20  # --key-tokens-per-minute of the module's gateway (finish() below ends a job with 5 + 7 tokens)
BODY = {"model": "m1", "prompt": "hi", "max_tokens": 2}


def hdr(key, **more):
    return {"Authorization": f"Bearer {key}", **more}


def tenant_of(key):
    """What the job hash records: 128 bits of SHA-256 of the key, in hex (hashlib, not the gateway's code)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    srv = RedisServer(tmp, free_port()).start()
    (tmp / "keys").write_text(f"{KEY_A}\n{KEY_B}\n")
    (tmp / "admin").write_text(f"# operators\n{KEY_ADMIN}\n")
    gw = Gateway(srv.url, ["--models", "m1,m2", "--api-key-file", str(tmp / "keys"), "--admin-key-file",
                           str(tmp / "admin"), "--key-max-jobs", str(LIMIT), "--key-tokens-per-minute", str(TPM),
                           "--result-ttl", "600"], tmp)
    try:
        gw.wait_ready()  # connected to Redis: a submission before that is a 503
        yield gw, redis.Redis.from_url(srv.url)
    finally:
        gw.stop()
        srv.stop()


def submit(gw, key, body=BODY, **headers):
    st, h, b = gw.request("POST", "/v1/jobs", body, headers=hdr(key, **headers))
    return st, h, json.loads(b) if b else None


def test_a_job_is_its_keys(fleet):
    gw, r = fleet
    st, _, j = submit(gw, KEY_A)
    assert st == 202
    jid = j["id"]
    # another key: 404 on every route, exactly as for an unknown id; nothing cancelled
    for method, path in (("GET", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/events"), ("DELETE", f"/v1/jobs/{jid}")):
        st, b = gw.json(method, path, headers=hdr(KEY_B))
        assert st == 404 and b["error"]["code"] == "job_not_found", (method, path, st, b)
    assert r.hget(f"llmq:job:{{{jid}}}", "state") == b"queued"
    assert r.hget(f"llmq:job:{{{jid}}}", "tenant").decode() == tenant_of(KEY_A)
    # its own key and an admin key see it; the admin may cancel it
    assert gw.json("GET", f"/v1/jobs/{jid}", headers=hdr(KEY_A))[1]["status"] == "queued"
    assert gw.json("GET", f"/v1/jobs/{jid}", headers=hdr(KEY_ADMIN))[0] == 200
    st, b = gw.json("DELETE", f"/v1/jobs/{jid}", headers=hdr(KEY_ADMIN))
    assert st == 200 and b["status"] == "cancelled"
    # the key itself is nowhere in Redis
    for k in r.scan_iter("*"):
        dump = r.dump(k) or b""
        assert KEY_A.encode() not in k and KEY_A.encode() not in dump, k


def test_idempotency_keys_are_per_api_key(fleet):
    gw, r = fleet
    st, h, a = submit(gw, KEY_A, **{"Idempotency-Key": "order-1"})
    assert st == 202 and "idempotent-replayed" not in h
    # B's use of the same Idempotency-Key, even with another body, is B's own first submission
    st, h, b = submit(gw, KEY_B, {**BODY, "prompt": "other"}, **{"Idempotency-Key": "order-1"})
    assert st == 202 and "idempotent-replayed" not in h and b["id"] != a["id"], (st, b)
    assert a["id"] not in json.dumps(b)
    # each key's retry replays its own job
    st, h, a2 = submit(gw, KEY_A, **{"Idempotency-Key": "order-1"})
    assert st == 202 and h["idempotent-replayed"] == "true" and a2["id"] == a["id"]
    st, h, b2 = submit(gw, KEY_B, {**BODY, "prompt": "other"}, **{"Idempotency-Key": "order-1"})
    assert st == 202 and h["idempotent-replayed"] == "true" and b2["id"] == b["id"]
    for jid in (a["id"], b["id"]):
        gw.request("DELETE", f"/v1/jobs/{jid}", headers=hdr(KEY_ADMIN))


def test_idempotency_key_lives_as_long_as_its_job(fleet):
    gw, r = fleet
    # a job that is gone (expired, deleted): a retry is a fresh submission, not a replay of a dead id
    st, _, j = submit(gw, KEY_A, **{"Idempotency-Key": "order-10"})
    assert st == 202
    r.delete(f"llmq:job:{{{j['id']}}}")
    st, h, j2 = submit(gw, KEY_A, **{"Idempotency-Key": "order-10"})
    assert st == 202 and "idempotent-replayed" not in h and j2["id"] != j["id"], (st, h, j2)
    assert gw.json("GET", f"/v1/jobs/{j2['id']}", headers=hdr(KEY_A))[0] == 200
    gw.request("DELETE", f"/v1/jobs/{j2['id']}", headers=hdr(KEY_A))
    # a job that ends (cancelled while queued, TTL --result-ttl 600): the key's record
    # (docs/protocol.md: <P>idem:{<tenant>:<key>}) gets the job's TTL, not a day
    st, _, j = submit(gw, KEY_A, **{"Idempotency-Key": "order-9"})
    assert st == 202
    job, rec = f"llmq:job:{{{j['id']}}}", f"llmq:idem:{{{tenant_of(KEY_A)}:order-9}}"
    assert r.hget(rec, "id").decode() == j["id"]
    assert gw.json("DELETE", f"/v1/jobs/{j['id']}", headers=hdr(KEY_A))[0] == 200
    assert 0 < r.ttl(rec) <= r.ttl(job) <= 600, (r.ttl(rec), r.ttl(job))


def test_priority_range(fleet):
    gw, r = fleet
    for p, want in ((10, 202), (-10, 202), (11, 400), (-11, 400), (2147483647, 400)):
        st, _, b = submit(gw, KEY_B, {**BODY, "priority": p})
        assert st == want, (p, st, b)
        if st == 400:
            assert b["error"]["param"] == "priority" and "-10 and 10" in b["error"]["message"]
        else:
            gw.request("DELETE", f"/v1/jobs/{b['id']}", headers=hdr(KEY_B))
    st, _, b = submit(gw, KEY_ADMIN, {**BODY, "priority": 1000})  # admin keys: any priority
    assert st == 202
    gw.request("DELETE", f"/v1/jobs/{b['id']}", headers=hdr(KEY_ADMIN))
    # the OpenAI routes take the same range
    st, b = gw.json("POST", "/v1/completions", {**BODY, "priority": 99}, headers=hdr(KEY_B))
    assert st == 400 and b["error"]["param"] == "priority"


def test_unfinished_jobs_per_key(fleet):
    gw, r = fleet
    ids = []
    for _ in range(LIMIT):
        st, _, j = submit(gw, KEY_A, {**BODY, "model": "m2"})
        assert st == 202
        ids.append(j["id"])
    st, h, b = submit(gw, KEY_A, {**BODY, "model": "m2"})
    assert st == 429 and h.get("retry-after") and f"limit {LIMIT}" in b["error"]["message"], (st, h, b)
    assert b["error"]["code"] == "key_limit" and b["error"]["type"] == "rate_limit_error"  # not the model's queue_full
    assert r.xlen("llmq:req:m2") == LIMIT  # nothing written for the refused one
    # another key, and an admin key, are not held back by A's jobs
    st, _, jb = submit(gw, KEY_B, {**BODY, "model": "m2"})
    assert st == 202
    assert submit(gw, KEY_ADMIN, {**BODY, "model": "m2"})[0] == 202
    # a cancel frees a slot at once
    assert gw.json("DELETE", f"/v1/jobs/{ids[0]}", headers=hdr(KEY_A))[0] == 200
    st, _, j = submit(gw, KEY_A, {**BODY, "model": "m2"})
    assert st == 202
    ids[0] = j["id"]
    # a worker's end (the finish script) frees one; so does a job whose hash vanished
    # without an end (expired, deleted: a crashed worker's job never leaks a slot)
    assert admit(r, ids[1], worker="w0")[0] == 1
    assert finish(r, ids[1], 1) == 1
    r.delete(f"llmq:job:{{{ids[2]}}}")
    assert submit(gw, KEY_A, {**BODY, "model": "m2"})[0] == 202  # the finished one's slot
    assert submit(gw, KEY_A, {**BODY, "model": "m2"})[0] == 429  # the vanished one is reclaimed at most every 10 s
    r.delete(f"llmq:tenant:{{{tenant_of(KEY_A)}}}:jobs:pruned")  # ... as if 10 s had passed
    assert submit(gw, KEY_A, {**BODY, "model": "m2"})[0] == 202
    assert submit(gw, KEY_A, {**BODY, "model": "m2"})[0] == 429
    assert r.scard(f"llmq:tenant:{{{tenant_of(KEY_A)}}}:jobs") == LIMIT
    for jid in r.smembers(f"llmq:tenant:{{{tenant_of(KEY_A)}}}:jobs"):  # A's slots back for the next tests
        assert gw.json("DELETE", f"/v1/jobs/{jid.decode()}", headers=hdr(KEY_A))[0] == 200
    assert r.scard(f"llmq:tenant:{{{tenant_of(KEY_A)}}}:jobs") == 0


def test_default_queue_bound(fleet):
    """--max-queue defaults to 10000 waiting jobs per model (docs/operations.md)."""
    gw, r = fleet
    r.delete("llmq:req:m2")
    r.xgroup_create("llmq:req:m2", "workers", "0", mkstream=True)
    p = r.pipeline(transaction=False)
    for i in range(10000):
        p.xadd("llmq:req:m2", {"id": f"x{i}", "p": b"\x80"})
    p.execute()
    st, h, b = submit(gw, KEY_ADMIN, {**BODY, "model": "m2"})
    assert st == 429 and b["error"]["code"] == "queue_full" and h.get("retry-after"), (st, b)
    assert "limit 10000" in b["error"]["message"]


def window_wait(r, key):
    """Whole seconds from now until the key's count over the last minute is
    below TPM, no job ending meanwhile: docs/protocol.md "Tenants" (this
    minute's count plus the previous minute's weighted by the part of it still
    in the window, on Redis's clock), stepped second by second."""
    sec, usec = r.time()
    now = sec * 1000 + usec // 1000
    prefix = f"llmq:tenant:{{{tenant_of(key)}}}:tokens:"
    counts = {m: int(r.get(f"{prefix}{m}") or 0) for m in (now // 60000 - 1, now // 60000)}

    def used(ms):
        m = ms // 60000
        return counts.get(m, 0) + counts.get(m - 1, 0) * (1 - ms % 60000 / 60000)
    s = 1
    while used(now + s * 1000) >= TPM:
        s += 1
    return s


def test_tokens_per_minute_per_key(fleet):
    """The tokens of a key's jobs that ended (prompt + completion, as the
    worker's final script writes them) over the last minute are bounded."""
    gw, r = fleet
    for used in (0, 12):  # below the budget: accepted, and the job runs to its end (12 tokens)
        st, _, j = submit(gw, KEY_B)
        assert st == 202, (used, st, j)
        assert admit(r, j["id"], worker="w0")[0] == 1 and finish(r, j["id"], 1) == 1
    st, h, b = submit(gw, KEY_B)
    assert st == 429 and h.get("retry-after") and f"limit {TPM} per minute" in b["error"]["message"], (st, b)
    # its own code, and Retry-After the time until the window frees the budget (seconds to
    # the next minute of Redis's clock, and on while the minute that ends still weighs)
    want = window_wait(r, KEY_B)
    assert b["error"]["code"] == "key_limit" and abs(int(h["retry-after"]) - want) <= 1, (h, b, want)
    assert want > 1 and f"retry in {h['retry-after']} s" in b["error"]["message"]
    st, h, b = gw.request("POST", "/v1/completions", BODY, headers=hdr(KEY_B))  # the OpenAI routes: the same
    b = json.loads(b)
    assert st == 429 and b["error"]["code"] == "key_limit" and abs(int(h["retry-after"]) - want) <= 1, (st, h, b)
    # others are not held back: another key, an admin key
    for key in (KEY_A, KEY_ADMIN):
        st, _, j = submit(gw, key)
        assert st == 202
        gw.request("DELETE", f"/v1/jobs/{j['id']}", headers=hdr(key))
