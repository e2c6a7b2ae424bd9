"""Bad input, limits, authentication, Redis outages and the operational
endpoints of llmq-gateway."""
import json
import socket
import time

import redis

from fake_worker import wait_for
from gwtest import sse_events


def err(gw, method, path, body=None, headers=None):
    st, h, b = gw.request(method, path, body, headers)
    j = json.loads(b)
    assert set(j["error"]) == {"message", "type", "param", "code"}, j
    return st, j["error"], h


def test_malformed_json_and_wrong_types(gateway):
    st, e, _ = err(gateway, "POST", "/v1/completions", '{"model": "m1", "prompt": ')
    assert st == 400 and "invalid JSON" in e["message"]
    st, e, _ = err(gateway, "POST", "/v1/completions", "[1, 2]")
    assert st == 400 and "JSON object" in e["message"]
    st, e, _ = err(gateway, "POST", "/v1/completions", "")
    assert st == 400 and "empty" in e["message"]
    cases = [
        ({"model": 5, "prompt": "x"}, "model"),
        ({"model": "m1"}, "prompt"),
        ({"model": "m1", "prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"model": "m1", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "m1", "prompt": "x", "temperature": 3}, "temperature"),
        ({"model": "m1", "prompt": "x", "top_p": []}, "top_p"),
        ({"model": "m1", "prompt": "x", "stop": 7}, "stop"),
        ({"model": "m1", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "m1", "prompt": "x", "seed": 1.5}, "seed"),
        ({"model": "m1", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m1", "prompt": "x", "logit_bias": {"1": 2}}, "logit_bias"),
        ({"model": "bad model", "prompt": "x"}, "model"),
    ]
    for body, param in cases:
        st, e, _ = err(gateway, "POST", "/v1/completions", body)
        assert st == 400 and e["param"] == param and e["type"] == "invalid_request_error", (body, e)
    st, e, _ = err(gateway, "POST", "/v1/chat/completions", {"model": "m1", "messages": "hi"})
    assert st == 400 and e["param"] == "messages"
    st, e, _ = err(gateway, "POST", "/v1/chat/completions",
                   {"model": "m1", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert st == 400 and "text" in e["message"]


def test_unknown_model_and_routes(gateway):
    st, e, _ = err(gateway, "POST", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert st == 404 and e["code"] == "model_not_found"
    st, e, _ = err(gateway, "GET", "/v2/whatever")
    assert st == 404
    st, e, h = err(gateway, "GET", "/v1/completions")
    assert st == 405 and h["allow"] == "POST"


def test_limits(start_gateway):
    g = start_gateway("--max-body-bytes", "1000", "--max-tokens-limit", "64")
    g.wait_ready()
    st, e, _ = err(g, "POST", "/v1/completions", {"model": "m1", "prompt": "x" * 5000})
    assert st == 413
    st, e, _ = err(g, "POST", "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": 65})
    assert st == 400 and e["param"] == "max_tokens" and "64" in e["message"]
    # a huge body announced with Expect: 100-continue is refused before it is sent
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 413")
    s.close()
    # chunked bodies are bounded too
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        try:
            s.sendall(b"400\r\n" + b"a" * 1024 + b"\r\n")
        except OSError:
            break
    assert s.recv(100).startswith(b"HTTP/1.1 413")
    s.close()
    # garbage that is not HTTP
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"\x00\x01 hello\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()
    # after all that the gateway still serves
    assert g.request("GET", "/healthz")[0] == 200


def test_api_keys(start_gateway, tmp_path, worker):
    keys = tmp_path / "keys"
    keys.write_text("# llmq keys\nsk-first\n\n  sk-second  \n")
    g = start_gateway("--api-key-file", str(keys))
    g.wait_ready()
    assert "NO API KEYS" not in g.log_text()
    st, e, h = err(g, "GET", "/v1/models")
    assert st == 401 and e["code"] == "invalid_api_key" and "bearer" in h["www-authenticate"].lower()
    st, e, _ = err(g, "GET", "/v1/models", headers={"Authorization": "Bearer sk-firs"})
    assert st == 401
    st, e, _ = err(g, "GET", "/v1/models", headers={"Authorization": "Bearer sk-first-and-more"})
    assert st == 401
    for k in ("sk-first", "sk-second"):
        assert g.request("GET", "/v1/models", headers={"Authorization": f"Bearer {k}"})[0] == 200
    # the probes and metrics stay open
    assert g.request("GET", "/healthz")[0] == 200
    assert g.request("GET", "/metrics")[0] == 200
    import openai
    worker()
    c = openai.OpenAI(base_url=g.base + "/v1", api_key="sk-second", max_retries=0)
    assert c.completions.create(model="m1", prompt="x", max_tokens=1).choices[0].text == " t0"
    bad = openai.OpenAI(base_url=g.base + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("accepted a wrong key")
    except openai.AuthenticationError:
        pass


def test_no_keys_warns_loudly(gateway):
    assert "NO API KEYS" in gateway.log_text()


def test_queue_bound_429(start_gateway, redis_server):
    g = start_gateway("--max-queue", "2")
    g.wait_ready()
    for _ in range(2):
        assert g.request("POST", "/v1/jobs", {"model": "m1", "prompt": "x"})[0] == 202
    st, e, h = err(g, "POST", "/v1/jobs", {"model": "m1", "prompt": "x"})
    assert st == 429 and e["code"] == "queue_full" and h["retry-after"] == "1"
    st, e, _ = err(g, "POST", "/v1/completions", {"model": "m1", "prompt": "x"})
    assert st == 429
    r = redis.Redis.from_url(redis_server.url)
    assert r.xlen("llmq:req:m1") == 2  # nothing was trimmed away
    # a worker takes the queued jobs: there is room again
    r.xreadgroup("workers", "c1", {"llmq:req:m1": ">"}, count=10)
    assert g.request("POST", "/v1/jobs", {"model": "m1", "prompt": "x"})[0] == 202
    _, _, body = g.request("GET", "/metrics")
    assert 'llmq_gateway_queue_full_total{model_name="m1"} 2' in body.decode()


def test_redis_down_and_back(start_gateway, redis_server, worker):
    g = start_gateway()
    g.wait_ready()
    redis_server.stop()
    wait_for(lambda: g.request("GET", "/readyz")[0] == 503)
    st, e, h = err(g, "POST", "/v1/jobs", {"model": "m1", "prompt": "x"})
    assert st == 503 and e["code"] == "redis_unavailable" and h["retry-after"]
    assert g.request("GET", "/healthz")[0] == 200
    assert 'llmq_gateway_redis_up 0' in g.request("GET", "/metrics")[2].decode()
    redis_server.start()  # same port, empty data: the gateway must recreate the group
    g.wait_ready(timeout=15)
    r = redis.Redis.from_url(redis_server.url)
    assert r.xinfo_groups("llmq:req:m1")[0]["name"] == b"workers"
    worker()
    st, _, b = g.request("POST", "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": 2})
    assert st == 200 and json.loads(b)["choices"][0]["text"] == " t0 t1"


def test_stream_survives_redis_restart(start_gateway, redis_server):
    """A client streaming events across a Redis restart sees every chunk written after it."""
    g = start_gateway()
    g.wait_ready()
    r = redis.Redis.from_url(redis_server.url)
    r.hset("llmq:job:{j1}", mapping={"state": "running", "model": "m1"})
    c = g.connect()
    c.request("GET", "/v1/jobs/j1/events")
    resp = c.getresponse()
    import msgpack
    r.xadd("llmq:job:{j1}:out", {"c": msgpack.packb({"seq": 0, "text": "a", "ids": []})})
    r.publish("llmq:out:{j1}", msgpack.packb({"seq": 0, "text": "a", "ids": []}))
    redis_server.stop()
    redis_server.start()
    r = redis.Redis.from_url(redis_server.url)
    # the restarted Redis lost everything; the worker (resuming) writes seq 0 again and continues
    for seq, text, fin in ((0, "a", None), (1, "b", None), (2, "c", "stop")):
        ch = {"seq": seq, "text": text, "ids": []}
        if fin:
            ch["finish"] = fin
        r.xadd("llmq:job:{j1}:out", {"c": msgpack.packb(ch)})
        r.publish("llmq:out:{j1}", msgpack.packb(ch))
    seqs = [json.loads(e["data"])["seq"] for e in sse_events(resp)]
    assert seqs == [0, 1, 2]


def test_client_disconnect_frees_stream(gateway, worker):
    worker(delay=0.05)
    for path in ("/v1/jobs", "/v1/completions"):
        body = {"model": "m1", "prompt": "x", "max_tokens": 200}
        if path == "/v1/jobs":
            jid = json.loads(gateway.request("POST", path, body)[2])["id"]
            req = f"GET /v1/jobs/{jid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        else:
            body["stream"] = True
            data = json.dumps(body).encode()
            req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
        s = socket.create_connection(("127.0.0.1", gateway.port))
        s.sendall(req)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()
    wait_for(lambda: "llmq_gateway_open_streams 0\n" in gateway.request("GET", "/metrics")[2].decode())


def test_pipelined_requests(gateway):
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    s.settimeout(5)
    while True:
        got = s.recv(65536)
        if not got:
            break
        data += got
    s.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert b'"object":"list"' in data


def test_metrics_exposition(gateway, worker):
    worker()
    gateway.request("POST", "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": 1})
    st, h, b = gateway.request("GET", "/metrics")
    text = b.decode()
    assert st == 200 and h["content-type"].startswith("text/plain")
    assert '# TYPE llmq_gateway_http_requests_total counter' in text
    assert 'llmq_gateway_http_requests_total{route="/v1/completions",code="200"} 1' in text
    assert 'llmq_gateway_jobs_submitted_total{model_name="m1"} 1' in text
    assert 'llmq_gateway_http_request_duration_seconds_bucket{route="/v1/completions",le="+Inf"} 1' in text
    assert 'llmq_gateway_redis_up 1' in text


def test_any_model_and_prefix(start_gateway, redis_server, worker):
    g = start_gateway("--prefix", "t1:", models=None)
    g.wait_ready()
    worker(model="org/model-7b", prefix="t1:")
    st, _, b = g.request("POST", "/v1/completions", {"model": "org/model-7b", "prompt": "x", "max_tokens": 1})
    assert st == 200, b
    r = redis.Redis.from_url(redis_server.url)
    assert r.exists("t1:req:org/model-7b") and not r.exists("llmq:req:org/model-7b")
    st, j = g.json("GET", "/v1/models")
    assert [m["id"] for m in j["data"]] == ["org/model-7b"]


def test_graceful_shutdown_lets_stream_finish(start_gateway, worker):
    g = start_gateway()
    g.wait_ready()
    worker(delay=0.05)
    c = g.connect()
    c.request("POST", "/v1/completions", body=json.dumps({"model": "m1", "prompt": "x", "max_tokens": 10, "stream": True}))
    resp = c.getresponse()
    time.sleep(0.1)
    import signal
    g.proc.send_signal(signal.SIGTERM)
    data = [e["data"] for e in sse_events(resp)]
    assert data[-1] == "[DONE]"
    g.proc.wait(10)
    assert g.proc.returncode == 0
