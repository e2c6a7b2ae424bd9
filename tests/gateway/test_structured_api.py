"""Structured output at the gateway (issue 21): OpenAI's `response_format`
and vLLM's `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`
become the request's `guide` map {type, data} (docs/protocol.md), read back
here with msgpack from the request stream by the protocol test driver; wrong
shapes are a 400 naming the field, before anything is queued; the worker's
refusal of a constraint (codes invalid_constraint and
structured_output_unavailable) is a 400 naming the field, streamed or not.

One fleet for the module: model m1 has a fake worker that records what it
reads, `idle` none (its jobs are played by hand).
"""
import http.client
import json
import types

import llguidance
import msgpack
import openai
import pytest
import redis

from fake_worker import FakeWorker, wait_for
from gwtest import Gateway
from llmqtest import RedisServer, free_port

MSGS = [{"role": "user", "content": "x"}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("structured")
    srv = RedisServer(d, free_port()).start()
    w, gw = None, None
    try:
        gw = Gateway(srv.url, ["--models", "m1,idle"], d)
        gw.wait_ready()
        w = FakeWorker(srv.url, "m1").start()
        yield types.SimpleNamespace(gw=gw, w=w, r=redis.Redis.from_url(srv.url, decode_responses=True),
                                    oc=openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0,
                                                     timeout=30))
    finally:
        if w:
            w.stop()
        if gw:
            gw.stop()
        srv.stop()


def seen(fleet, resp_id):
    """The request of a response as the worker decoded it from the stream."""
    jid = resp_id.split("-", 1)[1] if "-" in resp_id else resp_id
    return wait_for(lambda: next((q for q in fleet.w.seen if q.get("id") == jid), None))


def chat_guide(fleet, response_format=None, **extra):
    """The guide of a chat request with these parameters (extra: vLLM's, in extra_body)."""
    kw = {"response_format": response_format} if response_format is not None else {}
    r = fleet.oc.chat.completions.create(model="m1", messages=MSGS, max_tokens=2, extra_body=extra or None, **kw)
    return seen(fleet, r.id).get("guide")


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


# what an object schema without llguidance options of its own gets: JSON without free whitespace
NO_WS = {"x-guidance": {"whitespace_flexible": False}}
JSON_OBJECT = {"type": "json_schema", "data": compact({"type": "object", **NO_WS})}


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
          "required": ["name", "age"], "additionalProperties": False}


def test_each_shape_lands_as_its_guide(fleet):
    oc = fleet.oc
    # response_format on chat, and on completions
    assert chat_guide(fleet, response_format={"type": "json_object"}) == JSON_OBJECT
    r = oc.completions.create(model="m1", prompt="x", max_tokens=2,
                              extra_body={"response_format": {"type": "json_object"}})
    assert seen(fleet, r.id)["guide"] == JSON_OBJECT
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    # the schema as it was written: same keys in the same order (llguidance emits properties in schema order)
    assert chat_guide(fleet, response_format=rf) == {"type": "json_schema", "data": compact({**SCHEMA, **NO_WS})}
    assert "guide" not in seen(fleet, oc.chat.completions.create(model="m1", messages=MSGS, max_tokens=1,
                                                                 response_format={"type": "text"}).id)
    # vLLM's extra parameters
    assert chat_guide(fleet, guided_json=SCHEMA) == {"type": "json_schema", "data": compact({**SCHEMA, **NO_WS})}
    bounds = '{"type": "number", "minimum": 0.1, "maximum": 2.5e3}'
    g = chat_guide(fleet, guided_json=bounds)  # a string holding the schema
    assert g["type"] == "json_schema" and json.loads(g["data"]) == {**json.loads(bounds), **NO_WS}
    # a schema with llguidance options of its own is passed as it is
    own = {"type": "array", "x-guidance": {"whitespace_flexible": True, "item_separator": ", "}}
    assert chat_guide(fleet, guided_json=own) == {"type": "json_schema", "data": compact(own)}
    assert chat_guide(fleet, guided_json=True) == {"type": "json_schema", "data": "true"}
    assert chat_guide(fleet, guided_regex=r"\d{3}-[a-z]+") == {"type": "regex", "data": r"\d{3}-[a-z]+"}
    lark = 'start: item ("," item)*\nitem: /[0-9]+/'
    assert chat_guide(fleet, guided_grammar=lark) == {"type": "lark", "data": lark}
    # a choice: Lark alternatives of JSON string literals, whatever the strings hold
    choices = ["yes", 'say "no"', "back\\slash", "ünï 🙂", "two\nlines", "a|b"]
    g = chat_guide(fleet, guided_choice=choices)
    assert g == {"type": "lark", "data": "start: " + " | ".join(compact(c) for c in choices)}
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(g["data"])) == ""
    # a text response_format next to a guided_* is one constraint
    assert chat_guide(fleet, response_format={"type": "text"}, guided_regex="a+") == {"type": "regex", "data": "a+"}


def test_job_api_takes_the_same_fields(fleet):
    for body, want in [({"guided_choice": ["x", "y"]}, {"type": "lark", "data": 'start: "x" | "y"'}),
                       ({"response_format": {"type": "json_object"}}, JSON_OBJECT)]:
        st, _, b = fleet.gw.request("POST", "/v1/jobs", {"model": "m1", "prompt": "x", "max_tokens": 1, **body})
        assert st == 202, b
        assert seen(fleet, json.loads(b)["id"])["guide"] == want


BAD = [
    ({"response_format": "json"}, "response_format", "'response_format' must be an object"),
    ({"response_format": {"type": "xml"}}, "response_format", "not 'xml'"),
    ({"response_format": {}}, "response_format", "'response_format.type' must be one of"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "'response_format.json_schema' must be"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}}, "response_format",
     "'response_format.json_schema.schema' is required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": 3}}}, "response_format",
     "must be a JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}}, "response_format",
     "'response_format.json_schema.name' must be a string"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}},
     "response_format", "'response_format.json_schema.strict' must be a boolean"),
    ({"guided_json": "{not json"}, "guided_json", "'guided_json' is not valid JSON"),
    ({"guided_json": 5}, "guided_json", "'guided_json' must be a JSON Schema"),
    ({"guided_json": "[1]"}, "guided_json", "'guided_json' must be a JSON Schema"),
    ({"guided_regex": 5}, "guided_regex", "'guided_regex' must be a string"),
    ({"guided_grammar": {"x": 1}}, "guided_grammar", "'guided_grammar' must be a string"),
    ({"guided_choice": []}, "guided_choice", "non-empty array of strings"),
    ({"guided_choice": "yes"}, "guided_choice", "non-empty array of strings"),
    ({"guided_choice": ["a", 1]}, "guided_choice", "entry 1 is an integer"),
    ({"guided_regex": "a" * (1 << 20 | 1)}, "guided_regex", "longer than 1048576 bytes"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex",
     "'response_format' and 'guided_regex' were both given"),
    ({"guided_json": {}, "guided_choice": ["a"]}, "guided_choice", "'guided_json' and 'guided_choice' were both"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/jobs"])
def test_bad_shapes_are_400_naming_the_field(fleet, path):
    base = {"model": "m1", "messages": MSGS} if "chat" in path else {"model": "m1", "prompt": "x"}
    before = fleet.r.xlen("llmq:req:m1")
    for extra, param, msg in BAD:
        st, _, b = fleet.gw.request("POST", path, {**base, **extra})
        e = json.loads(b)["error"]
        assert st == 400 and e["param"] == param and msg in e["message"], (extra, st, e)
        assert e["type"] == "invalid_request_error"
    assert fleet.r.xlen("llmq:req:m1") == before  # nothing was queued


def job_ids(r):
    return {k[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}") if k.endswith("}")}


def post_raw(gw, path, body):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return c


@pytest.mark.parametrize("code,msg", [
    ("invalid_constraint", "invalid regex: unclosed group at offset 3"),
    ("structured_output_unavailable", "structured output needs llguidance: start the worker with --llguidance PATH"),
])
def test_worker_refusal_is_a_400_naming_the_field(fleet, code, msg):
    """The worker refuses the constraint at admission (status 400 and the
    code, in the final chunk): an HTTP 400 with its message and code, whose
    param is the body field of the constraint, for chat and completions,
    streamed (the SSE headers wait for the first event) and not."""
    refusal = {"seq": 0, "text": "", "ids": [], "finish": "error", "status": 400, "code": code, "error": msg,
               "usage": {"prompt_tokens": 1, "completion_tokens": 0}}
    cases = [("/v1/chat/completions", {"messages": MSGS, "guided_regex": "(a("}, "guided_regex"),
             ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_object"}}, "response_format")]
    for path, body, param in cases:
        for stream in (False, True):
            before = job_ids(fleet.r)
            c = post_raw(fleet.gw, path, {"model": "idle", "stream": stream, **body})
            jid = wait_for(lambda: next(iter(job_ids(fleet.r) - before), None))
            data = msgpack.packb(refusal)
            fleet.r.hset(f"llmq:job:{{{jid}}}", "state", "running")
            fleet.r.xadd(f"llmq:job:{{{jid}}}:out", {"c": data})
            fleet.r.publish(f"llmq:out:{{{jid}}}", data)
            resp = c.getresponse()
            assert resp.status == 400 and resp.getheader("Content-Type") == "application/json", (path, stream)
            e = json.loads(resp.read())["error"]
            c.close()
            assert e == {"message": msg, "type": "invalid_request_error", "param": param, "code": code}, e
