"""OpenAI tools on chat completions end to end (issue 21): the official
`openai` client against the real llmq-gateway, redis-server and llmq-worker
on stories260K (a 2048-token context; no chat template: chatml, the Hermes/Qwen tool format) with
llguidance; two more workers serve it with the llama-3.1 and mistral-v3
templates (--chat-template), whose calls are JSON with "parameters" and a
[TOOL_CALLS] array.

  - tool_choice "required" and a named function: the worker constrains the
    output to one <tool_call> of the tools' parameter schemas, the gateway
    parses it: message.tool_calls (id call_..., type function, arguments JSON
    text that validates with `jsonschema`), content null, finish_reason
    "tool_calls";
  - "auto": a story model writes a story: plain content, finish "stop"/"length";
  - "none": the tools are not rendered (the prompt is as without them);
  - a history with an assistant's tool_calls and a "tool" turn is accepted;
  - streamed (the openai client's stream and its accumulating helper, and raw
    SSE): the first delta of a call has index, id, type and name, then its
    arguments come in fragments, the last chunk says "tool_calls", and what was
    streamed adds up to the answer without `stream` (same seed); "auto"
    streams the story as content;
  - parallel_tool_calls false is taken (at most one call);
  - the job API (POST /v1/jobs with messages) takes tools and tool_choice: the
    worker renders and constrains them alike, the job's text is the call as
    the model wrote it (not parsed: parallel_tool_calls there is a 400, as are
    tools with a prompt);
  - llama-3.1 and mistral-v3: required and named calls in the family's syntax,
    parsed the same streamed or not; a history with a call and its result
    renders (Mistral's template wants ids of 9 characters or more: a shorter
    one is the template's 400);
  - malformed tools, an unknown named function, tool_choice with
    response_format, a parallel_tool_calls that is not a boolean: a 400
    naming the field.

How tools are rendered (byte for byte against Qwen2.5's Jinja template) and
how tool-call texts parse are C unit tests (test_tok_chat, test_toolcall).
"""
import http.client
import json
import os
import time
import urllib.parse

import jsonschema
import openai
import pytest

from worker_util import Gateway, Worker

try:
    import llguidance
    LIB = os.path.dirname(llguidance.__file__)
except ImportError:  # make deps installs it into .venv
    LIB = None

# small: stories260K has a 512-token context and a 512-entry vocabulary
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "time", "parameters": TIME}}]
SCHEMAS = {"weather": WEATHER, "time": TIME}
MSGS = [{"role": "user", "content": "Weather?"}]
FAMILIES = {"stories-llama31": "llama-3.1", "stories-mistral3": "mistral-v3"}


@pytest.fixture(scope="module")
def fleet(shared_dir, tmp_path_factory):
    from llmqtest import RedisServer, free_port
    if LIB is None:
        pytest.skip("llguidance is not installed in this python (make deps)")
    tmp = tmp_path_factory.mktemp("tools")
    srv = RedisServer(tmp, free_port()).start()
    # the Qwen tools preamble alone is ~450 tokens of a 512-entry vocabulary: the
    # model's copy with a 2048-token context (RoPE runs past its training)
    d = tmp / "stories2k"
    d.mkdir()
    src = shared_dir / "models" / "stories260K"
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json"):
        (d / f).symlink_to(src / f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (d / "config.json").write_text(json.dumps(cfg))
    w = Worker(d, srv.url, "stories", tmp / "w.log", "--llguidance", LIB)
    more = [Worker(d, srv.url, m, tmp / f"{m}.log", "--llguidance", LIB, "--chat-template", t)
            for m, t in FAMILIES.items()]
    gw = None
    try:
        gw = Gateway(srv.url, tmp / "gw.log", "--models", ",".join(["stories", *FAMILIES]))
        yield openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        if gw:
            gw.stop()
        for x in [w, *more]:
            x.stop()
        srv.stop()


def check_call(choice, names):
    m = choice.message
    assert choice.finish_reason == "tool_calls", choice
    assert m.content is None, m
    assert len(m.tool_calls) == 1, m
    tc = m.tool_calls[0]
    assert tc.type == "function" and tc.id.startswith("call_") and len(tc.id) > 10, tc
    assert tc.function.name in names, tc
    jsonschema.validate(json.loads(tc.function.arguments), SCHEMAS[tc.function.name])
    return tc


def test_required_and_named_calls(fleet):
    ids = set()
    for seed in range(3):  # sampled, several seeds: the constraint, not luck, makes the call
        r = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, tool_choice="required",
                                          seed=seed, max_tokens=120)
        ids.add(check_call(r.choices[0], SCHEMAS).id)
    assert len(ids) == 3  # random ids
    r = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, seed=1, max_tokens=120,
                                      tool_choice={"type": "function", "function": {"name": "time"}})
    assert check_call(r.choices[0], ["time"]).function.name == "time"


def test_auto_and_none(fleet):
    r = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, tool_choice="auto",
                                      temperature=0, max_tokens=8)
    c = r.choices[0]
    assert c.message.tool_calls is None and c.message.content and c.finish_reason in ("stop", "length"), c
    # "none": tools are not rendered, so the prompt is the plain one (same token count)
    plain = fleet.chat.completions.create(model="stories", messages=MSGS, temperature=0, max_tokens=1)
    none = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, tool_choice="none",
                                         temperature=0, max_tokens=1)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 100  # "auto" rendered them


def test_history_with_calls(fleet):
    msgs = MSGS + [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "time", "arguments": "{\"zone\": \"UTC\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    r = fleet.chat.completions.create(model="stories", messages=msgs, tools=TOOLS, temperature=0, max_tokens=4)
    base = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, temperature=0, max_tokens=1)
    assert r.usage.prompt_tokens > base.usage.prompt_tokens + 10


@pytest.mark.parametrize("kw,param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_refused(fleet, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        fleet.chat.completions.create(model="stories", messages=MSGS, max_tokens=4, **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body


def accumulate(chunks):
    """The streamed choice 0 put together as an OpenAI client does: content,
    tool calls by index (checking each delta's shape), finish_reason."""
    content, calls, finish = "", [], None
    for ch in chunks:
        if not ch.choices:
            continue
        c = ch.choices[0]
        d = c.delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            if tc.index == len(calls):  # a call's first delta: id, type, name
                assert tc.id.startswith("call_") and tc.type == "function" and tc.function.name, tc
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments or ""})
            else:  # then only its arguments
                assert tc.index == len(calls) - 1 and tc.id is None and tc.function.name is None, tc
                calls[-1]["arguments"] += tc.function.arguments or ""
        finish = c.finish_reason or finish
    return content, calls, finish


def test_stream_equals_whole(fleet):
    for kw in ({"tool_choice": "required", "seed": 4},
               {"tool_choice": {"type": "function", "function": {"name": "weather"}}, "seed": 5},
               {"tool_choice": "required", "seed": 6, "parallel_tool_calls": False}):
        whole = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, max_tokens=120, **kw)
        chunks = list(fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, max_tokens=120,
                                                    stream=True, **kw))
        content, calls, finish = accumulate(chunks)
        w = whole.choices[0]
        tc = check_call(w, SCHEMAS)
        assert finish == "tool_calls" and content == "", (content, finish)
        assert [(c["name"], c["arguments"]) for c in calls] == [(tc.function.name, tc.function.arguments)]
        # the arguments came in fragments, the first with the name
        frags = [t for ch in chunks if ch.choices for t in (ch.choices[0].delta.tool_calls or [])]
        assert len(frags) >= 3 and frags[0].function.name and not frags[1].function.name, frags
    # the client's own accumulator (openai's ChatCompletionStreamState) agrees
    with fleet.chat.completions.stream(model="stories", messages=MSGS, tools=TOOLS, tool_choice="required", seed=4,
                                       max_tokens=120) as st:
        final = st.get_final_completion()
    c = final.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
    jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments),
                        SCHEMAS[c.message.tool_calls[0].function.name])


def test_stream_auto_content(fleet):
    whole = fleet.chat.completions.create(model="stories", messages=MSGS, tools=TOOLS, temperature=0, max_tokens=24)
    content, calls, finish = accumulate(fleet.chat.completions.create(
        model="stories", messages=MSGS, tools=TOOLS, temperature=0, max_tokens=24, stream=True))
    w = whole.choices[0]
    assert w.message.tool_calls is None and not calls
    assert content == w.message.content and finish == w.finish_reason, (content, w)


def test_stream_raw_sse(fleet):
    """The bytes on the wire: data: lines of chat.completion.chunk objects, a
    call's first delta exactly {index, id, type, function: {name, arguments: ""}},
    the last choice chunk an empty delta with finish_reason tool_calls, [DONE]."""
    u = urllib.parse.urlsplit(str(fleet.base_url))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {"model": "stories", "messages": MSGS, "tools": TOOLS, "seed": 2, "max_tokens": 120, "stream": True,
            "tool_choice": {"type": "function", "function": {"name": "time"}}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events = [ln[6:] for ln in r.read().decode().split("\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    deltas = [o["choices"][0]["delta"] for o in objs if o["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    tcs = [d for d in deltas if "tool_calls" in d]
    assert all("content" not in d for d in tcs), tcs
    first = tcs[0]["tool_calls"][0]
    assert set(first) == {"index", "id", "type", "function"} and first["index"] == 0 and first["type"] == "function"
    assert first["function"]["name"] == "time" and first["id"].startswith("call_")
    args = "".join(t["function"].get("arguments", "") for d in tcs for t in d["tool_calls"])
    jsonschema.validate(json.loads(args), TIME)
    assert all(set(t) == {"index", "function"} and set(t["function"]) == {"arguments"}
               for d in tcs[1:] for t in d["tool_calls"])
    last = objs[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "tool_calls", last


@pytest.mark.parametrize("model", FAMILIES)
def test_families(fleet, model):
    for kw in ({"tool_choice": "required", "seed": 1},
               {"tool_choice": {"type": "function", "function": {"name": "time"}}, "seed": 2}):
        whole = fleet.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, max_tokens=120, **kw)
        tc = check_call(whole.choices[0], SCHEMAS)
        content, calls, finish = accumulate(fleet.chat.completions.create(
            model=model, messages=MSGS, tools=TOOLS, max_tokens=120, stream=True, **kw))
        assert finish == "tool_calls" and content == "", (content, finish)
        assert [(c["name"], c["arguments"]) for c in calls] == [(tc.function.name, tc.function.arguments)]
    call = {"id": "call_0123456789", "type": "function", "function": {"name": "time", "arguments": "{\"zone\": \"UTC\"}"}}
    hist = MSGS + [{"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": "12:00"}]
    r = fleet.chat.completions.create(model=model, messages=hist, tools=TOOLS, temperature=0, max_tokens=2)
    assert r.usage.prompt_tokens > 100
    if model == "stories-mistral3":
        call["id"] = "call_1"
        with pytest.raises(openai.BadRequestError) as e:
            fleet.chat.completions.create(model=model, messages=hist, tools=TOOLS, max_tokens=2)
        assert "length 9" in e.value.body["message"], e.value.body


def _http(fleet, method, path, body=None):
    u = urllib.parse.urlsplit(str(fleet.base_url))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")


def test_job_api(fleet):
    body = {"model": "stories", "messages": MSGS, "tools": TOOLS, "seed": 3, "max_tokens": 120,
            "tool_choice": {"type": "function", "function": {"name": "weather"}}}
    st, j = _http(fleet, "POST", "/v1/jobs", body)
    assert st == 202, j
    deadline = time.time() + 60
    while True:
        st, job = _http(fleet, "GET", f"/v1/jobs/{j['id']}")
        if job["status"] not in ("queued", "running") or time.time() > deadline:
            break
        time.sleep(0.05)
    assert job["status"] == "done" and job["finish_reason"] == "stop", job
    text = job["text"]
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    call = json.loads(text[len("<tool_call>\n"):-len("\n</tool_call>")])
    assert call["name"] == "weather", call
    jsonschema.validate(call["arguments"], WEATHER)
    for extra, param in (({"parallel_tool_calls": False}, "parallel_tool_calls"),
                         ({"messages": None, "prompt": "Weather?"}, "tools")):
        b = {k: v for k, v in {**body, **extra}.items() if v is not None}
        st, e = _http(fleet, "POST", "/v1/jobs", b)
        assert st == 400 and e["error"]["param"] == param, e
