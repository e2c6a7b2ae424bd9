"""The OpenAI-compatible endpoints of llmq-gateway, driven by the official
`openai` Python client, with the protocol test driver as the worker."""
import json

import msgpack
import openai
import pytest
import redis

from fake_worker import wait_for
from gwtest import sse_events


def client(gw, key="unused"):
    return openai.OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0, timeout=30)


def expected(n):
    return "".join(f" t{i}" for i in range(n))


def test_completion_non_stream(gateway, worker):
    w = worker()
    r = client(gateway).completions.create(model="m1", prompt="once upon a time", max_tokens=5, temperature=0, seed=7)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == "m1"
    assert r.choices[0].text == expected(5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 5 and r.usage.total_tokens == 9
    req = w.seen[-1]
    assert req["v"] == 1 and req["prompt"] == "once upon a time" and req["max_tokens"] == 5
    assert req["temperature"] == 0 and req["seed"] == 7 and req["model"] == "m1"
    assert req["id"] == r.id[len("cmpl-"):]


def test_completion_default_max_tokens_is_16(gateway, worker):
    w = worker()
    r = client(gateway).completions.create(model="m1", prompt="x")
    assert r.usage.completion_tokens == 16
    assert w.seen[-1]["max_tokens"] == 16


def test_completion_stream(gateway, worker):
    worker(delay=0.01)
    stream = client(gateway).completions.create(model="m1", prompt="hello", max_tokens=6, stream=True,
                                                stream_options={"include_usage": True})
    texts, finish, usage = [], None, None
    for ch in stream:
        if ch.choices:
            texts.append(ch.choices[0].text)
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            usage = ch.usage
    assert "".join(texts) == expected(6)
    assert finish == "length"
    assert usage.completion_tokens == 6


def test_chat_non_stream_and_stream(gateway, worker):
    w = worker()
    c = client(gateway)
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]
    r = c.chat.completions.create(model="m1", messages=msgs, max_tokens=3)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected(3)
    assert r.usage.completion_tokens == 3
    sent = w.seen[-1]["messages"]
    assert sent == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]

    roles, parts, finish = [], [], None
    for ch in c.chat.completions.create(model="m1", messages=msgs, max_completion_tokens=4, stream=True):
        assert ch.object == "chat.completion.chunk"
        d = ch.choices[0].delta
        if d.role:
            roles.append(d.role)
        if d.content:
            parts.append(d.content)
        finish = ch.choices[0].finish_reason or finish
    assert roles == ["assistant"]
    assert "".join(parts) == expected(4)
    assert finish == "length"


def lp_reply(req):
    """Three chunks whose tokens split "é" across two byte tokens (held back
    text: the first chunk's text is empty), a token with no known piece (a
    worker without a tokenizer) and a -inf logprob."""
    return [
        ("", [10], [[-0.5, b" \xc3", [[10, -0.5, b" \xc3"], [11, -1.5, b"x"]]]]),
        (" \u00e9", [12], [[-0.25, b"\xa9", [[12, -0.25, b"\xa9"], [13, -2.0, None]]]]),
        ("!", [14], [[float("-inf"), b"!", []]]),
    ], "length"


def test_logprobs_shapes(gateway, worker):
    """How chunk `lp` reads in OpenAI's completions and chat shapes, streamed
    or not: bytes that are part of a character read \\xHH in the token string
    and exactly in `bytes`; text_offset counts characters; -inf is -9999.0."""
    worker(reply_fn=lp_reply)
    c = client(gateway)
    r = c.completions.create(model="m1", prompt="x", logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == " \u00e9!"
    assert lp.tokens == [" \\xc3", "\\xa9", "!"]
    assert lp.token_logprobs == [-0.5, -0.25, -9999.0]
    assert lp.top_logprobs == [{" \\xc3": -0.5, "x": -1.5}, {"\\xa9": -0.25, "token_id:13": -2.0}, {"!": -9999.0}]
    assert lp.text_offset == [0, 2, 2]
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ch in c.completions.create(model="m1", prompt="x", logprobs=2, stream=True):
        if ch.choices[0].logprobs:
            for k in streamed:
                streamed[k] += getattr(ch.choices[0].logprobs, k)
    assert streamed == {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs,
                        "text_offset": lp.text_offset}

    msgs = [{"role": "user", "content": "x"}]
    r = c.chat.completions.create(model="m1", messages=msgs, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [(t.token, t.logprob, t.bytes) for t in content] == [(" \\xc3", -0.5, [32, 0xc3]), ("\\xa9", -0.25, [0xa9]),
                                                               ("!", -9999.0, [33])]
    assert [(t.token, t.logprob, t.bytes) for t in content[1].top_logprobs] == [("\\xa9", -0.25, [0xa9]),
                                                                               ("token_id:13", -2.0, None)]
    assert bytes(sum((t.bytes for t in content), [])).decode() == r.choices[0].message.content
    got = []
    for ch in c.chat.completions.create(model="m1", messages=msgs, logprobs=True, top_logprobs=2, stream=True):
        if ch.choices and ch.choices[0].logprobs:
            got += ch.choices[0].logprobs.content
    assert got == content
    # the job API: ids too
    job_id = r.id.split("-", 1)[1]
    conn = gateway.connect()
    conn.request("GET", "/v1/jobs/" + job_id)
    body = json.loads(conn.getresponse().read())
    assert [(e["id"], e["token"], e["bytes"]) for e in body["logprobs"]] == [(10, " \\xc3", [32, 0xc3]),
                                                                           (12, "\\xa9", [0xa9]), (14, "!", [33])]
    assert body["logprobs"][1]["top_logprobs"][1] == {"id": 13, "token": "token_id:13", "logprob": -2.0, "bytes": None}
    conn.close()


def test_stream_raw_sse_ends_with_done(gateway, worker):
    worker()
    c = gateway.connect()
    c.request("POST", "/v1/completions", body=json.dumps({"model": "m1", "prompt": "x", "max_tokens": 2, "stream": True}))
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("text/event-stream")
    data = [e["data"] for e in sse_events(r)]
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in last  # streamed only when stream_options.include_usage asks (test_streams.py)
    # keep-alive: the same connection serves another request after the stream
    c.request("GET", "/healthz")
    assert c.getresponse().status == 200
    c.close()


def test_models(gateway):
    ms = client(gateway).models.list()
    assert [m.id for m in ms.data] == ["m1"]
    st, body = gateway.json("GET", "/v1/models/m1")
    assert st == 200 and body["id"] == "m1"
    st, body = gateway.json("GET", "/v1/models/nope")
    assert st == 404


def test_errors_through_openai_client(gateway):
    c = client(gateway)
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no-such-model", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="m1", prompt="x", temperature="hot")
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], n=17)
    assert e.value.body["param"] == "n"


def test_failed_job_maps_to_error(gateway, worker):
    worker()
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="m1", prompt="FAIL")
    assert "asked to fail" in e.value.message
    with pytest.raises(openai.InternalServerError):
        c.completions.create(model="m1", prompt="CRASH")
    # streaming, refused before any output: the same HTTP error (test_streams.py has more)
    conn = gateway.connect()
    conn.request("POST", "/v1/completions", body=json.dumps({"model": "m1", "prompt": "FAIL", "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 400 and "asked to fail" in json.loads(resp.read())["error"]["message"]
    conn.close()


def test_resumed_job_streams_once(gateway, redis_server):
    """A chunk already in the output stream before the client subscribed (a job
    resumed elsewhere, or a late client) is sent once, in seq order."""
    r = redis.Redis.from_url(redis_server.url)
    c = gateway.connect()
    c.request("POST", "/v1/completions", body=json.dumps({"model": "m1", "prompt": "x", "max_tokens": 3,
                                                          "stream": True}))
    # play the worker by hand: find the job, write seq 0 and 1 to the stream only
    # (as if published before we subscribed), then publish seq 1 again live and 2.
    # (The response begins with the job's first event: read it after these.)
    jobs = wait_for(lambda: [k for k in r.scan_iter("llmq:job:{*}") if k.endswith(b"}")])
    jid = jobs[0].decode()[len("llmq:job:{"):-1]
    out, chan = f"llmq:job:{{{jid}}}:out", f"llmq:out:{{{jid}}}"
    c0 = msgpack.packb({"seq": 0, "text": "a", "ids": [1]})
    c1 = msgpack.packb({"seq": 1, "text": "b", "ids": [2]})
    c2 = msgpack.packb({"seq": 2, "text": "c", "ids": [3], "finish": "length",
                        "usage": {"prompt_tokens": 1, "completion_tokens": 3}})
    r.xadd(out, {"c": c0})
    r.xadd(out, {"c": c1})
    r.publish(chan, c1)  # duplicate of what the stream holds
    r.xadd(out, {"c": c2})
    r.publish(chan, c2)
    resp = c.getresponse()
    texts = [json.loads(e["data"])["choices"][0]["text"] for e in sse_events(resp) if e["data"] != "[DONE]"]
    assert "".join(texts) == "abc"
