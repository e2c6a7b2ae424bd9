"""The gateway knows which models are served (issue 22): the models of live
worker heartbeats (<prefix>workers) plus --models (they scale from zero).
Any other name is a 404 `model_not_found` at once, on the OpenAI routes, the
job API and `llmq submit`, and leaves nothing in Redis; /v1/models lists only
served models, with `max_model_len` from the heartbeats; a max_tokens past
that context is a 400 before queueing; /health and /version answer as
vLLM's do.

One redis-server and one gateway (no --models) serve most checks; the fake
worker (fake_worker.py) heartbeats model "m1" with a context of 64 tokens.
"""
import json
import pathlib
import subprocess
import sys
import time

import openai
import pytest
import redis

from fake_worker import FakeWorker
from gwtest import BUILD, Gateway, free_port
from llmqtest import SHARED, RedisServer

CTX = 64  # the fake worker's max_model_len


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    srv = RedisServer(tmp, free_port()).start()
    w = FakeWorker(srv.url, "m1", max_model_len=CTX).start()
    g = Gateway(srv.url, [], tmp)
    g.wait_ready()
    yield srv, g, w
    g.stop()
    w.stop()
    srv.stop()


def post(g, path, body, timeout=4):
    """The request of the issue: `curl -m4`; a hang is a failure, not a wait."""
    st, _, b = g.request("POST", path, body, timeout=timeout)
    return st, json.loads(b) if b else None


def stream_keys(srv):
    """The models that have request streams (a model's priority lanes, <model>#high
    and <model>#low beside <model>, count once)."""
    r = redis.Redis.from_url(srv.url)
    return sorted({k.decode().split("#")[0] for k in r.scan_iter("llmq:req:*")})


def test_unknown_model_is_404_everywhere_and_leaves_nothing(fleet):
    srv, g, _ = fleet
    for path, body in (("/v1/completions", {"model": "typo-model", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "typo-model", "messages": [{"role": "user", "content": "x"}]}),
                       ("/v1/completions", {"model": "typo-model", "prompt": "x", "stream": True}),
                       ("/v1/jobs", {"model": "typo-model", "prompt": "x"}),
                       ("/tokenize", {"model": "typo-model", "prompt": "x"}),
                       ("/detokenize", {"model": "typo-model", "tokens": [1]})):
        st, j = post(g, path, body)
        assert st == 404, (path, j)
        assert j["error"]["code"] == "model_not_found" and j["error"]["param"] == "model", j
    c = openai.OpenAI(base_url=g.base + "/v1", api_key="unused", max_retries=0, timeout=4)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="typo-model", prompt="x")
    # the served model still works, and nothing was made for the typo
    assert c.completions.create(model="m1", prompt="x", max_tokens=2).choices[0].text == " t0 t1"
    assert stream_keys(srv) == ["llmq:req:m1"]
    st, j = g.json("GET", "/v1/models")
    assert [m["id"] for m in j["data"]] == ["m1"]
    assert g.request("GET", "/v1/models/typo-model")[0] == 404


def test_junk_model_names_fill_nothing(fleet):
    """Issue 23 #7: 4,096 junk names used to fill the gateway's model table."""
    srv, g, _ = fleet
    conn = g.connect(timeout=4)
    for i in range(300):
        conn.request("POST", "/v1/completions", body=json.dumps({"model": f"junk-{i}", "prompt": "x"}))
        r = conn.getresponse()
        r.read()
        assert r.status == 404
    conn.close()
    assert stream_keys(srv) == ["llmq:req:m1"]
    assert [m["id"] for m in g.json("GET", "/v1/models")[1]["data"]] == ["m1"]


def test_worker_that_just_came_up_is_served_at_once(fleet):
    srv, g, _ = fleet
    w = FakeWorker(srv.url, "fresh-model", consumer="fresh-0").start()  # its first heartbeat, just written
    try:
        st, j = post(g, "/v1/completions", {"model": "fresh-model", "prompt": "x", "max_tokens": 1})
        assert st == 200, j
        assert "fresh-model" in [m["id"] for m in g.json("GET", "/v1/models")[1]["data"]]
    finally:
        w.stop()
        redis.Redis.from_url(srv.url).hdel("llmq:workers", "fresh-0")  # gone: the next read drops the model


def test_stale_heartbeat_is_not_served(fleet):
    srv, g, _ = fleet
    r = redis.Redis.from_url(srv.url)
    hb = {"model": "dead-model", "consumer": "dead-0", "capacity": 8, "running": 0, "waiting": 0,
          "kv_free": 0, "kv_total": 0, "max_model_len": 512, "ts": int(time.time() * 1000) - 120_000}
    r.hset("llmq:workers", "dead-0", json.dumps(hb))
    st, j = post(g, "/v1/completions", {"model": "dead-model", "prompt": "x"})
    assert st == 404 and j["error"]["code"] == "model_not_found"
    assert "dead-model" not in [m["id"] for m in g.json("GET", "/v1/models")[1]["data"]]
    assert not r.exists("llmq:req:dead-model")


def test_models_list_has_max_model_len(fleet):
    _, g, _ = fleet
    st, j = g.json("GET", "/v1/models")
    m1 = [m for m in j["data"] if m["id"] == "m1"][0]
    assert m1["object"] == "model" and m1["max_model_len"] == CTX
    st, card = g.json("GET", "/v1/models/m1")
    assert st == 200 and card["max_model_len"] == CTX


def test_max_tokens_past_the_context_is_400(fleet):
    srv, g, w = fleet
    r = redis.Redis.from_url(srv.url)
    before = r.xlen("llmq:req:m1")
    for path, body in (("/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": 4000}),
                       ("/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": CTX + 1}),
                       ("/v1/jobs", {"model": "m1", "prompt": "x", "max_tokens": 4000})):
        st, j = post(g, path, body)
        assert st == 400, (path, j)
        assert j["error"]["param"] == "max_tokens" and j["error"]["code"] == "context_length_exceeded", j
        assert f"maximum context length is {CTX} tokens" in j["error"]["message"], j
    st, j = post(g, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                             "max_completion_tokens": 4000})
    assert st == 400 and j["error"]["param"] == "max_completion_tokens"
    c = openai.OpenAI(base_url=g.base + "/v1", api_key="unused", max_retries=0, timeout=4)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="m1", prompt="x", max_tokens=4000)
    assert r.xlen("llmq:req:m1") == before  # refused before queueing
    st, j = post(g, "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": CTX})
    assert st == 200 and j["usage"]["completion_tokens"] == CTX


def test_health_and_version(fleet, tmp_path):
    _, g, _ = fleet
    st, h, b = g.request("GET", "/health")
    assert st == 200 and b == b""
    st, j = g.json("GET", "/version")
    assert st == 200 and isinstance(j["version"], str) and j["version"]
    assert g.request("POST", "/health")[0] == 405
    # no Redis behind it: /health says so (/healthz, the liveness probe, does not)
    down = Gateway(f"redis://127.0.0.1:{free_port()}", [], tmp_path)
    try:
        assert down.request("GET", "/health")[0] == 503
        assert down.request("GET", "/healthz")[0] == 200
    finally:
        down.stop()


def test_models_flag_scales_from_zero_and_startup_log(fleet, tmp_path):
    srv, g, _ = fleet
    assert "served models: m1 (1 worker, context 64)" in g.log_text()
    z = Gateway(srv.url, ["--models", "zero-model"], tmp_path)
    try:
        z.wait_ready()
        st, j = post(z, "/v1/jobs", {"model": "zero-model", "prompt": "x", "max_tokens": 4000})
        assert st == 202, j  # no worker yet: accepted and queued, no context known to refuse it
        ids = {m["id"]: m for m in z.json("GET", "/v1/models")[1]["data"]}
        assert {"zero-model", "m1"} <= set(ids) and ids["zero-model"]["max_model_len"] is None
        assert post(z, "/v1/jobs", {"model": "typo-model", "prompt": "x"})[0] == 404
        log = z.log_text()
        assert "(--models): zero-model" in log and "served models: zero-model (--models, 0 workers)" in log
    finally:
        z.stop()
    redis.Redis.from_url(srv.url).delete("llmq:req:zero-model")


def llmq(*args, timeout=30):
    return subprocess.run([str(BUILD / "llmq"), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_submit_refuses_unknown_model_and_times_out(fleet):
    srv, _, _ = fleet
    p = llmq("submit", "--redis", srv.url, "--model", "typo", "--prompt", "x", "--wait", timeout=10)
    assert p.returncode == 1 and "no live worker serves model 'typo'" in p.stderr, p.stderr
    p = llmq("submit", "--redis", srv.url, "--model", "m1", "--prompt", "x", "--max-tokens", "4000")
    assert p.returncode == 1 and "context" in p.stderr, p.stderr
    t0 = time.time()
    p = llmq("submit", "--redis", srv.url, "--model", "typo", "--prompt", "x", "--force", "--wait", "--timeout", "1",
             timeout=10)
    assert p.returncode == 1 and "did not finish within 1 s (status: queued)" in p.stderr, p.stderr
    assert time.time() - t0 < 5
    j = json.loads(llmq("submit", "--redis", srv.url, "--model", "m1", "--prompt", "x", "--max-tokens", "2",
                        "--wait", "--timeout", "10").stdout)
    assert j["status"] == "done" and j["text"] == " t0 t1"
    redis.Redis.from_url(srv.url).delete("llmq:req:typo")


def test_real_worker_heartbeat_carries_its_context(fleet, tmp_path):
    """llmq-worker's heartbeat: stories260K's 512 tokens reach /v1/models and the max_tokens check."""
    if SHARED is None:
        pytest.skip("../shared is absent: stories260K not available")
    srv, g, _ = fleet
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
    from worker_util import Worker
    r = redis.Redis.from_url(srv.url)

    def heartbeat():
        return next((hb for hb in map(json.loads, r.hvals("llmq:workers")) if hb["model"] == "stories"), None)

    w = Worker(SHARED / "models" / "stories260K", srv.url, "stories", tmp_path / "w.log")
    try:
        deadline = time.time() + 30
        while not heartbeat():
            assert time.time() < deadline and w.proc.poll() is None, "no heartbeat from llmq-worker"
            time.sleep(0.05)
        assert heartbeat()["max_model_len"] == 512
        st, j = post(g, "/v1/completions", {"model": "stories", "prompt": "Once", "max_tokens": 4000})
        assert st == 400 and "maximum context length is 512 tokens" in j["error"]["message"], j
        st, j = post(g, "/v1/completions", {"model": "stories", "prompt": "Once", "max_tokens": 4}, timeout=30)
        assert st == 200 and j["usage"]["completion_tokens"] == 4, j
        assert [m["max_model_len"] for m in g.json("GET", "/v1/models")[1]["data"] if m["id"] == "stories"] == [512]
    finally:
        w.stop()
