"""Structured output end to end (issue 21): the official `openai` client and
the job API against the real llmq-gateway, redis-server and llmq-worker on
stories260K with llguidance (the .venv's wheel, loaded by the worker).

  - JSON mode (`response_format: json_object`) on 20 prompts: every output is
    the start of a JSON object (stories260K writes prose in its strings and
    never ends an object by itself, so within a few tokens the test can only
    see the start; one that ends parses whole);
  - JSON Schemas (OpenAI's response_format.json_schema and vLLM's guided_json)
    with nested objects, arrays, enums, required fields and bounded numbers:
    every output validates with the `jsonschema` package;
  - guided_regex matches (Python's `re`), guided_choice is one of the choices
    (quotes, a bar and non-ASCII in them), guided_grammar (Lark) matches;
  - streamed equals not streamed; a seed repeats; a constrained job killed
    with -9 mid-way and resumed by another worker gives the uninterrupted text;
  - an invalid constraint, and a worker without llguidance: a 400 with the
    worker's message, its code, and the field as `param`.

The worker's own side (the `guide` request key straight into Redis) is
tests/e2e/test_guide_worker.py.
"""
import concurrent.futures
import json
import os
import re
import time

import jsonschema
import openai
import pytest

from worker_util import Gateway, Worker, chunks, connect, job, wait_final

try:
    import llguidance
    LIB = os.path.dirname(llguidance.__file__)
except ImportError:  # make deps installs it into .venv
    LIB = None

PROMPTS = ["Once upon a time", "The cat", "Lily and Tom", "One day", "The big dog", "Tim had a ball", "Sue went",
           "A little bird", "The sun", "Ben and Mia", "There was a", "The girl", "Mom said", "In the park", "The boy",
           "Max", "The tree", "A frog", "Anna", "The red car"]
MSGS = [{"role": "user", "content": "Tell me about a pet."}]


@pytest.fixture(scope="module")
def fleet(shared_dir, tmp_path_factory):
    """One redis-server and gateway; worker "stories" with the library,
    worker "plain" (same model) whose LLMQ_LLGUIDANCE names nothing; model
    "resume" gets its workers in the crash test."""
    from llmqtest import RedisServer, free_port
    if LIB is None:
        pytest.skip("llguidance is not installed in this python (make deps)")
    tmp = tmp_path_factory.mktemp("structured")
    srv = RedisServer(tmp, free_port()).start()
    d = shared_dir / "models" / "stories260K"
    procs = [Worker(d, srv.url, "stories", tmp / "w.log", "--llguidance", LIB)]
    env = dict(os.environ)
    os.environ["LLMQ_LLGUIDANCE"] = "/nonexistent/llguidance"
    try:
        procs.append(Worker(d, srv.url, "plain", tmp / "plain.log"))
    finally:
        os.environ.clear()
        os.environ.update(env)
    gw = None
    try:
        gw = Gateway(srv.url, tmp / "gw.log", "--models", "stories,plain,resume")
        oc = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield {"oc": oc, "gw": gw, "r": connect(srv.url), "url": srv.url, "dir": d, "tmp": tmp}
    finally:
        if gw:
            gw.stop()
        for p in procs:
            p.stop()
        srv.stop()


def parallel(fn, items):
    with concurrent.futures.ThreadPoolExecutor(len(items)) as ex:
        return list(ex.map(fn, items))


def complete(oc, prompt, max_tokens, **kw):
    """One completion: (text, finish_reason); vLLM's and OpenAI's extra fields go in extra_body."""
    r = oc.completions.create(model=kw.pop("model", "stories"), prompt=prompt, max_tokens=max_tokens,
                              temperature=kw.pop("temperature", 0), seed=kw.pop("seed", None), extra_body=kw)
    return r.choices[0].text, r.choices[0].finish_reason


def json_object_start(text):
    """Whether text is the start of a JSON object: some ending (closing an
    open string, finishing a literal, a value for a key, the brackets) makes
    json.loads read a dict.  Written here, independently of llguidance."""
    stack, in_str, esc = [], False, None  # esc: -1 after a backslash, k after k hex digits of a \u escape
    for c in text:
        if in_str:
            if esc == -1:
                esc = 0 if c == "u" else None
            elif esc is not None:
                esc = esc + 1 if esc < 3 else None
            elif c == "\\":
                esc = -1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            stack.append(c)
        elif c in "}]":
            if not stack:
                return False
            stack.pop()
    tail = ""
    if in_str:
        tail = ("n" if esc == -1 else "0" * (4 - esc) if esc is not None else "") + '"'
    closers = "".join("}" if b == "{" else "]" for b in reversed(stack))
    for mid in ["", ":0", "0", '"":0', "rue", "ue", "e", "alse", "lse", "se", "ull", "ll", "l"]:
        try:
            if isinstance(json.loads(text + tail + mid + closers), dict):
                return True
        except ValueError:
            pass
    return False


def test_json_object_start_checker():
    """The checker itself, on hand-written cases."""
    for t in ['{', '{"', '{"a b', '{"a"', '{"a":', '{"a":"x\\', '{"a":"\\u00', '{"a":[1,', '{"a":{"b":t',
              '{"a":1,"b":-', '{"a":"b"}']:
        assert json_object_start(t), t
    for t in ['', '[', '"a"', '{"a"}', '{,', '{"a":1}}', 'x{']:
        assert not json_object_start(t), t


def test_json_mode_20_prompts(fleet):
    oc = fleet["oc"]
    outs = parallel(lambda p: complete(oc, p, 8, response_format={"type": "json_object"}), PROMPTS)
    for p, (text, finish) in zip(PROMPTS, outs):
        assert json_object_start(text), (p, text)
        if finish == "stop":
            assert isinstance(json.loads(text), dict), (p, text)
        else:
            assert finish == "length"
    # chat too, through the openai client's own response_format
    r = oc.chat.completions.create(model="stories", messages=MSGS, max_tokens=12, temperature=0,
                                   response_format={"type": "json_object"})
    assert json_object_start(r.choices[0].message.content), r.choices[0].message.content


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "pet": {"enum": ["cat", "dog", "fish"]},
        # a multiple of 0.25: a bounded number whose digits end (the model would write zeros forever)
        "score": {"type": "number", "minimum": -1.5, "maximum": 2.5, "multipleOf": 0.25},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 2},
        "home": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                  "lit": {"type": "boolean"}},
                 "required": ["x", "lit"], "additionalProperties": False},
    },
    "required": ["name", "age", "pet", "score", "tags", "home"],
    "additionalProperties": False,
}
TASKS = {
    "type": "array", "minItems": 2, "maxItems": 3,
    "items": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 50},
                                               "state": {"enum": ["todo", "done"]}},
              "required": ["id", "state"], "additionalProperties": False},
}


def test_json_schema_outputs_validate(fleet):
    oc = fleet["oc"]

    def run(case):
        schema, i, chat = case
        sampling = {"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "seed": 100 + i}
        if chat:
            r = oc.chat.completions.create(model="stories", messages=[{"role": "user", "content": PROMPTS[i]}],
                                           max_tokens=120, response_format={
                                               "type": "json_schema",
                                               "json_schema": {"name": "s", "schema": schema, "strict": True}},
                                           **sampling)
            return r.choices[0].message.content, r.choices[0].finish_reason
        return complete(oc, PROMPTS[i], 120, guided_json=schema, **sampling)

    cases = [(PERSON, 0, True), (PERSON, 1, False), (TASKS, 2, False), (TASKS, 3, True)]
    for (schema, i, chat), (text, finish) in zip(cases, parallel(run, cases)):
        assert finish == "stop", (i, chat, text)
        jsonschema.validate(json.loads(text), schema)


def test_regex_choice_and_grammar(fleet):
    oc = fleet["oc"]
    rx = r"(yes|no), [a-z]{2,6} [0-9]{1,3}!"
    choices = ["yes", 'say "hi"', "a|b", "ünï 🙂", "back\\slash"]
    lark = 'start: "The " animal " is " color "."\nanimal: "cat" | "dog" | "bird"\ncolor: "red" | "blue"'
    cases = [("rx", i) for i in range(3)] + [("choice", i) for i in range(5)] + [("lark", i) for i in range(3)]

    def run(case):
        kind, i = case
        kw = {"guided_regex": rx} if kind == "rx" else {"guided_choice": choices} if kind == "choice" else \
            {"guided_grammar": lark}
        return complete(oc, PROMPTS[i], 40, temperature=1.0, seed=i, **kw)

    got = {}
    for (kind, i), (text, finish) in zip(cases, parallel(run, cases)):
        assert finish == "stop", (kind, i, text)
        got.setdefault(kind, []).append(text)
        if kind == "rx":
            assert re.fullmatch(rx, text), text
        elif kind == "choice":
            assert text in choices, text
        else:
            assert re.fullmatch(r"The (cat|dog|bird) is (red|blue)\.", text), text
    assert len(set(got["choice"])) > 1  # sampling among the choices, not one forced answer


def test_streamed_equals_not_streamed_and_seed_repeats(fleet):
    oc = fleet["oc"]
    rf = {"type": "json_schema", "json_schema": {"name": "tasks", "schema": TASKS}}
    kw = dict(model="stories", messages=MSGS, max_tokens=120, temperature=1.0, seed=42, response_format=rf)

    def run(stream):
        if not stream:
            r = oc.chat.completions.create(**kw)
            return r.choices[0].message.content, r.choices[0].finish_reason
        parts, finish = [], None
        for ch in oc.chat.completions.create(stream=True, **kw):
            if ch.choices:
                parts.append(ch.choices[0].delta.content or "")
                finish = ch.choices[0].finish_reason or finish
        return "".join(parts), finish

    plain, streamed, again = parallel(run, [False, True, False])
    assert plain == streamed == again and plain[1] == "stop", (plain, streamed, again)
    jsonschema.validate(json.loads(plain[0]), TASKS)


def post_job(gw, body):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    c.request("POST", "/v1/jobs", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    assert r.status == 202, out
    return out["id"]


def test_crash_resume_of_a_constrained_job(fleet):
    """Jobs with a guided_regex through the job API: worker w1 of model
    "resume" is killed with -9 while they run, w2 takes them over; each
    text equals that of the same job run without interruption (by the
    "stories" worker: same model files)."""
    gw, r, tmp = fleet["gw"], fleet["r"], fleet["tmp"]
    rx = r"([a-z]+ ){15,25}[a-z]+\."
    bodies = [{"prompt": PROMPTS[i], "max_tokens": 150, "temperature": 0.8, "seed": 7 + i, "guided_regex": rx}
              for i in range(3)]
    refs = [post_job(gw, dict(b, model="stories")) for b in bodies]
    w1 = Worker(fleet["dir"], fleet["url"], "resume", tmp / "w1.log", "--llguidance", LIB, "--consumer", "w1",
                "--max-num-seqs", 2)
    jids = [post_job(gw, dict(b, model="resume")) for b in bodies]
    w2 = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(len(chunks(r, j)) >= 3 for j in jids):
            time.sleep(0.005)
        w1.kill()
        assert any(chunks(r, j) and not chunks(r, j)[-1].get("finish") for j in jids), "killed too late"
        w2 = Worker(fleet["dir"], fleet["url"], "resume", tmp / "w2.log", "--llguidance", LIB, "--consumer", "w2",
                    "--claim-idle-ms", 300)
        wait_final(r, refs + jids, timeout=120)
        for ref, jid in zip(refs, jids):
            want, got = job(r, ref), job(r, jid)
            assert got["state"] == "done" and want["state"] == "done", (want, got)
            text = "".join(c["text"] for c in chunks(r, jid))
            assert text == "".join(c["text"] for c in chunks(r, ref)), jid
            assert re.fullmatch(rx, text), text
        assert any(int(job(r, j)["attempts"]) == 2 for j in jids)
    finally:
        w1.stop()
        if w2:
            w2.stop()


def test_refusals_are_400_with_the_workers_message(fleet):
    oc = fleet["oc"]
    # an invalid constraint: llguidance's message, code invalid_constraint, the field as param
    for extra, param in [({"guided_regex": "(unclosed"}, "guided_regex"),
                         ({"guided_grammar": "start: nosuchrule"}, "guided_grammar")]:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                r = oc.chat.completions.create(model="stories", messages=MSGS, max_tokens=4, stream=stream,
                                               extra_body=extra)
                list(r) if stream else None
            err = e.value.body
            assert e.value.status_code == 400 and err["code"] == "invalid_constraint" and err["param"] == param, err
            assert len(err["message"]) > 20, err
    # a worker without llguidance: says how to enable it
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            r = oc.chat.completions.create(model="plain", messages=MSGS, max_tokens=4, stream=stream,
                                           response_format={"type": "json_object"})
            list(r) if stream else None
        err = e.value.body
        assert err["code"] == "structured_output_unavailable" and err["param"] == "response_format", err
        assert "--llguidance" in err["message"], err
    # and it serves unconstrained requests as before
    r = oc.chat.completions.create(model="plain", messages=MSGS, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content
