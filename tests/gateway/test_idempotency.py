"""Idempotent job submission: `POST /v1/jobs` with an `Idempotency-Key`
header creates one job however often it is retried (sequentially or at
once, through several gateways), a reuse of the key for another body is a
409 naming the first job, and the queue bound still holds."""
import concurrent.futures
import json

import redis

from fake_worker import wait_for

BODY = {"model": "m1", "prompt": "once", "max_tokens": 3}


def post(gw, body, key):
    st, h, b = gw.request("POST", "/v1/jobs", body, headers={"Idempotency-Key": key} if key else None)
    return st, h, json.loads(b) if b else None


def entries(redis_server, model="m1"):
    r = redis.Redis.from_url(redis_server.url)
    return r.xlen(f"llmq:req:{model}") if r.exists(f"llmq:req:{model}") else 0


def test_retry_with_the_same_key_gets_the_same_job(gateway, redis_server):
    st, h, j = post(gateway, BODY, "order-17:a")
    assert st == 202 and "idempotent-replayed" not in h
    for _ in range(3):
        st2, h2, j2 = post(gateway, BODY, "order-17:a")
        assert st2 == 202 and j2["id"] == j["id"] and h2["idempotent-replayed"] == "true"
        assert h2["location"] == f"/v1/jobs/{j['id']}"
    assert entries(redis_server) == 1
    # without a key, or with another key, each POST is a new job
    ids = {post(gateway, BODY, None)[2]["id"], post(gateway, BODY, None)[2]["id"], post(gateway, BODY, "other")[2]["id"]}
    assert len(ids) == 3 and j["id"] not in ids
    assert entries(redis_server) == 4
    r = redis.Redis.from_url(redis_server.url)
    rec = r.hgetall("llmq:idem:{order-17:a}")
    assert rec[b"id"].decode() == j["id"] and len(rec[b"body"]) == 16
    assert 3600 < r.ttl("llmq:idem:{order-17:a}") <= 86400  # as long as results live (--result-ttl, 1 day)


def test_key_reused_for_another_body_is_a_conflict(gateway, redis_server):
    st, _, j = post(gateway, BODY, "k-1")
    assert st == 202
    st, _, e = post(gateway, dict(BODY, prompt="something else"), "k-1")
    assert st == 409
    assert e["error"]["param"] == "Idempotency-Key" and e["error"]["code"] == "idempotency_key_reused"
    assert j["id"] in e["error"]["message"]
    assert entries(redis_server) == 1


def test_bad_keys_are_refused(gateway, redis_server):
    for key in ("has space", "x" * 129, "brace{", "semi;colon"):
        st, _, e = post(gateway, BODY, key)
        assert st == 400 and e["error"]["param"] == "Idempotency-Key", key
    assert entries(redis_server) == 0


def test_concurrent_retries_through_two_gateways_make_one_job(start_gateway, redis_server):
    gws = [start_gateway(), start_gateway()]
    for g in gws:
        g.wait_ready()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        res = list(ex.map(lambda i: post(gws[i % 2], BODY, "burst-1"), range(32)))
    assert all(st == 202 for st, _, _ in res)
    assert len({j["id"] for _, _, j in res}) == 1
    assert sum("idempotent-replayed" not in h for _, h, _ in res) == 1  # exactly one created it
    assert entries(redis_server) == 1


def test_queue_bound_holds_and_a_refused_key_is_not_recorded(start_gateway, redis_server, worker):
    g = start_gateway("--max-queue", "2")
    g.wait_ready()
    assert post(g, BODY, "q1")[0] == 202 and post(g, BODY, "q2")[0] == 202
    st, h, _ = post(g, BODY, "q3")
    assert st == 429 and "retry-after" in h
    assert post(g, BODY, "q1")[0] == 202  # a retry of an accepted key is answered, not bounded
    r = redis.Redis.from_url(redis_server.url)
    assert not r.exists("llmq:idem:{q3}")
    worker()  # drains the queue
    wait_for(lambda: entries(redis_server) == 2 and r.xinfo_groups("llmq:req:m1")[0]["lag"] == 0)
    st, h, j = post(g, BODY, "q3")  # the refused key now goes through
    assert st == 202 and "idempotent-replayed" not in h
    job = wait_for(lambda: (lambda s: s[1] if s[1]["status"] == "done" else None)(g.json("GET", f"/v1/jobs/{j['id']}")))
    assert job["attempts"] == 1
