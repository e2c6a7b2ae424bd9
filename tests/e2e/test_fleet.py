"""The whole fleet on one machine — real redis-server, real llmq-worker,
real llmq-gateway, real HTTP clients (the official `openai` package and a
raw SSE reader): reference texts through the OpenAI API, SSE that stays one
unbroken stream across a worker killed with -9, and a tensor-parallel group
serving the same texts as a single rank."""
import json
import threading
import time

import openai
import pytest

from worker_util import Gateway, Worker, connect, sse_completion



def test_reference_completions_through_gateway(redis_server, stories, tmp_path):
    d, refs = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    try:
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
        for ref in refs:
            r = client.completions.create(model="stories", prompt=ref["prompt"], max_tokens=48, temperature=0)
            assert r.choices[0].text == ref["completion"]
            assert r.choices[0].finish_reason == "length"
            assert r.usage.completion_tokens == 48 and r.usage.prompt_tokens == len(ref["prompt_ids"])
            texts, finish, done = sse_completion(gw.port, dict(model="stories", prompt=ref["prompt"],
                                                               max_tokens=48, temperature=0))
            assert "".join(texts) == ref["completion"] and finish == "length" and done
        stream = client.completions.create(model="stories", prompt=refs[0]["prompt"], max_tokens=48,
                                           temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in stream) == refs[0]["completion"]
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="stories", prompt="x" * 8, max_tokens=48, temperature=-1)
    finally:
        gw.stop()
        w.stop()


def test_sse_unbroken_across_worker_kill9(redis_server, stories, tmp_path):
    d, refs = stories
    bodies = [dict(model="stories", prompt=refs[i % 8]["prompt"], max_tokens=250, ignore_eos=True,
                   **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "seed": 100 + i}))
              for i in range(20)]
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    try:
        # uninterrupted reference run
        w = Worker(d, redis_server.url, "stories", tmp_path / "ref.log", "--max-num-seqs", 4)
        expected = [None] * 20

        def ref_run(i):
            expected[i] = "".join(sse_completion(gw.port, bodies[i])[0])
        ts = [threading.Thread(target=ref_run, args=(i,)) for i in range(20)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        w.stop()
        # the same 20 streams, the worker killed -9 in the middle, a new one started
        results = [None] * 20

        def run(i):
            results[i] = sse_completion(gw.port, bodies[i])
        r = connect(redis_server.url)
        before = sum(1 for _ in r.scan_iter("llmq:job:*:out"))  # the reference run's streams
        w1 = Worker(d, redis_server.url, "stories", tmp_path / "w1.log", "--max-num-seqs", 4, "--consumer", "a")
        ts = [threading.Thread(target=run, args=(i,)) for i in range(20)]
        [t.start() for t in ts]
        deadline = time.time() + 60
        while time.time() < deadline and sum(1 for _ in r.scan_iter("llmq:job:*:out")) < before + 4:
            time.sleep(0.01)
        w1.kill()
        w2 = Worker(d, redis_server.url, "stories", tmp_path / "w2.log", "--max-num-seqs", 4, "--consumer", "b",
                    "--claim-idle-ms", 300)
        [t.join(180) for t in ts]
        w2.stop()
        for i in range(20):
            texts, finish, done = results[i]
            assert done and finish == "length"
            assert "".join(texts) == expected[i], i
        assert "resuming" in (tmp_path / "w2.log").read_text()
    finally:
        gw.stop()


def test_tp2_group_through_gateway_same_texts(redis_server, stories, tmp_path):
    d, refs = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--tp", 2)
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    try:
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
        for ref in refs:
            r = client.completions.create(model="stories", prompt=ref["prompt"], max_tokens=48, temperature=0)
            assert r.choices[0].text == ref["completion"]
    finally:
        gw.stop()
        w.stop()


def test_chat_completions(redis_server, stories, tmp_path):
    """Chat through the gateway: a model without a chat template is served
    with the default template; forced to llama-2 the messages are rendered as
    `<s>[INST] ... [/INST]`, tokenized without adding another BOS, and the
    streamed deltas equal the whole answer."""
    import subprocess
    from llmqtest import BUILD
    d, refs = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Once upon a time"}]
    try:
        # no chat template: the documented default (chatml) serves it (tests/e2e/test_worker_api.py)
        r = client.chat.completions.create(model="stories", messages=msgs, max_tokens=8)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    finally:
        w.stop()
    w = Worker(d, redis_server.url, "stories", tmp_path / "w2.log", "--chat-template", "llama-2")
    try:
        r = client.chat.completions.create(model="stories", messages=msgs, max_tokens=24, temperature=0)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24 and text
        ids = json.loads(subprocess.run([str(BUILD / "llmq"), "tokenize", "--model", str(d), "--no-special", "--json",
                                         "--text", "<s>[INST] Once upon a time [/INST]"],
                                        capture_output=True, text=True, check=True).stdout)["ids"]
        assert r.usage.prompt_tokens == len(ids) and ids[0] == 1
        stream = client.chat.completions.create(model="stories", messages=msgs, max_tokens=24, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == text
    finally:
        gw.stop()
        w.stop()


def _http(gw, method, path, body=None, headers=None):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers=dict({"Content-Type": "application/json"}, **(headers or {})))
    r = c.getresponse()
    return r, c


def _events(gw, jid, last=None):
    r, c = _http(gw, "GET", f"/v1/jobs/{jid}/events", headers={"Last-Event-ID": str(last)} if last is not None else {})
    assert r.status == 200
    evs, cur = [], {}
    for raw in r:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if cur:
                evs.append(cur)
                cur = {}
            continue
        k, _, v = line.partition(":")
        cur[k] = cur.get(k, "") + v.lstrip(" ")
    c.close()
    return evs


def test_job_api_with_real_worker(redis_server, stories, tmp_path):
    d, refs = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    try:
        r, c = _http(gw, "POST", "/v1/jobs", dict(model="stories", prompt=refs[4]["prompt"], max_tokens=48,
                                                   temperature=0))
        assert r.status == 202
        jid = json.loads(r.read())["id"]
        c.close()
        deadline = time.time() + 60
        while True:
            r, c = _http(gw, "GET", f"/v1/jobs/{jid}")
            j = json.loads(r.read())
            c.close()
            if j["status"] == "done" or time.time() > deadline:
                break
            time.sleep(0.05)
        assert j["status"] == "done" and j["text"] == refs[4]["completion"] and j["finish_reason"] == "length"
        assert j["usage"]["completion_tokens"] == 48
        evs = [e for e in _events(gw, jid) if e.get("data")]
        ids = [int(e["id"]) for e in evs if "id" in e]
        # an event per chunk, and a chunk may carry several tokens (--chunk-interval-ms): count tokens
        tokens = sum(len(json.loads(e["data"])["ids"]) for e in evs if "id" in e)
        assert ids == list(range(len(ids))) and tokens == 48
        half = len(ids) // 2
        tail = [e for e in _events(gw, jid, last=ids[half - 1]) if "id" in e]
        assert [int(e["id"]) for e in tail] == ids[half:]
        # cancel a long job while it runs
        r, c = _http(gw, "POST", "/v1/jobs", dict(model="stories", prompt=refs[0]["prompt"], max_tokens=500,
                                                   ignore_eos=True))
        long_id = json.loads(r.read())["id"]
        c.close()
        while True:
            r, c = _http(gw, "GET", f"/v1/jobs/{long_id}")
            j = json.loads(r.read())
            c.close()
            if j["text"]:
                break
            time.sleep(0.02)
        r, c = _http(gw, "DELETE", f"/v1/jobs/{long_id}")
        assert r.status in (200, 202)
        c.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            r, c = _http(gw, "GET", f"/v1/jobs/{long_id}")
            j = json.loads(r.read())
            c.close()
            if j["status"] == "cancelled":
                break
            time.sleep(0.05)
        assert j["status"] == "cancelled" and j["finish_reason"] == "cancelled"
        assert j["usage"]["completion_tokens"] < 20000
    finally:
        gw.stop()
        w.stop()
