"""Constrained decoding in llmq-worker (llguidance through dlopen), with
requests written into a real redis-server by redis-py: a `guide` of type
json_schema, regex or lark yields text that the `jsonschema` package, Python's
`re` or the grammar's shape accepts, ending with finish "stop"; an invalid
constraint fails the job at admission (code invalid_constraint, 400); a worker
without the library answers structured_output_unavailable saying how to enable
it; a resumed constrained job continues exactly; seeded sampling repeats.

The gateway's side (response_format, guided_*) is tests/e2e/test_structured.py."""
import json
import os
import re
import time

import jsonschema
import msgpack
import pytest

from worker_util import Worker, assert_clean_stream, chunks, connect, ids_of, job, submit, text_of, wait_final

try:
    import llguidance
    LIB = os.path.dirname(llguidance.__file__)
except ImportError:  # make deps installs it into .venv
    LIB = None

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "pet": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "home": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
                 "required": ["x"], "additionalProperties": False},
    },
    "required": ["name", "age", "pet", "tags", "home"],
    "additionalProperties": False,
    # compact output: the test model's text is not JSON, so free whitespace would be most of it
    "x-guidance": {"whitespace_flexible": False},
}
PROMPTS = ["Once upon a time", "The cat", "Lily and Tom", "One day"]


def guide(kind, data):
    return {"type": kind, "data": data if isinstance(data, str) else json.dumps(data)}


@pytest.fixture(scope="module")
def fleet(shared_dir, tmp_path_factory):
    """One redis-server; worker "stories" with the library, worker "plain"
    (same model) with LLMQ_LLGUIDANCE naming nothing."""
    from llmqtest import RedisServer, free_port
    if LIB is None:
        pytest.skip("llguidance is not installed in this python (make deps)")
    tmp = tmp_path_factory.mktemp("guide")
    srv = RedisServer(tmp, free_port()).start()
    d = shared_dir / "models" / "stories260K"
    w = Worker(d, srv.url, "stories", tmp / "w.log", "--llguidance", LIB, "--claim-idle-ms", 300)
    old = os.environ.get("LLMQ_LLGUIDANCE")
    os.environ["LLMQ_LLGUIDANCE"] = "/nonexistent/llguidance"
    try:
        plain = Worker(d, srv.url, "plain", tmp / "plain.log")
    finally:
        if old is None:
            del os.environ["LLMQ_LLGUIDANCE"]
        else:
            os.environ["LLMQ_LLGUIDANCE"] = old
    try:
        yield {"r": connect(srv.url), "dir": d, "url": srv.url, "tmp": tmp, "log": tmp / "w.log"}
    finally:
        w.stop()
        plain.stop()
        srv.stop()


def final(r, jid):
    cs = chunks(r, jid)
    assert_clean_stream(cs)
    return cs, job(r, jid)


def test_json_schema_outputs_validate(fleet):
    r = fleet["r"]
    jids = []
    for i, p in enumerate(PROMPTS):
        submit(r, f"js{i}", prompt=p, max_tokens=200, temperature=0, guide=guide("json_schema", SCHEMA))
        submit(r, f"jss{i}", prompt=p, max_tokens=200, temperature=0.9, seed=11 + i,
               guide=guide("json_schema", SCHEMA))
        jids += [f"js{i}", f"jss{i}"]
    wait_final(r, jids)
    for jid in jids:
        cs, h = final(r, jid)
        assert h["state"] == "done" and h["finish_reason"] == "stop", (jid, h, text_of(cs))
        jsonschema.validate(json.loads(text_of(cs)), SCHEMA)


def test_regex_and_lark(fleet):
    r = fleet["r"]
    rx = r"(yes|no), [a-z]{2,5} [0-9]{1,3}!"
    lark = 'start: "The " animal " is " color "."\nanimal: "cat" | "dog"\ncolor: "red" | "blue"'
    for i, p in enumerate(PROMPTS):
        submit(r, f"rx{i}", prompt=p, max_tokens=64, temperature=0.8, seed=i, guide=guide("regex", rx))
        submit(r, f"lk{i}", prompt=p, max_tokens=64, temperature=0.8, seed=i, guide=guide("lark", lark))
    # an unconstrained job beside them runs as it always did
    submit(r, "free", prompt=PROMPTS[0], max_tokens=16, temperature=0)
    submit(r, "free2", prompt=PROMPTS[0], max_tokens=16, temperature=0, guide=guide("regex", "(.|\n)*"))
    names = [f"rx{i}" for i in range(4)] + [f"lk{i}" for i in range(4)] + ["free", "free2"]
    wait_final(r, names)
    for i in range(4):
        cs, h = final(r, f"rx{i}")
        assert h["finish_reason"] == "stop" and re.fullmatch(rx, text_of(cs)), text_of(cs)
        cs, h = final(r, f"lk{i}")
        assert h["finish_reason"] == "stop"
        assert re.fullmatch(r"The (cat|dog) is (red|blue)\.", text_of(cs)), text_of(cs)
    # a constraint that allows anything changes nothing
    assert ids_of(chunks(r, "free2")) == ids_of(chunks(r, "free")) and len(ids_of(chunks(r, "free"))) == 16


def test_seeded_constrained_sampling_repeats(fleet):
    r = fleet["r"]
    req = dict(prompt=PROMPTS[1], max_tokens=200, temperature=1.0, top_p=0.95, seed=1234,
               guide=guide("json_schema", SCHEMA))
    submit(r, "seedA", **req)
    # B runs in a batch with other work: the same ids
    submit(r, "seedB", **req)
    for k in range(3):
        submit(r, f"noise{k}", prompt=PROMPTS[k], max_tokens=40, temperature=0.7, seed=k)
    wait_final(r, ["seedA", "seedB"] + [f"noise{k}" for k in range(3)])
    a, b = chunks(r, "seedA"), chunks(r, "seedB")
    assert ids_of(a) == ids_of(b) and text_of(a) == text_of(b)
    jsonschema.validate(json.loads(text_of(a)), SCHEMA)


def test_invalid_constraint_fails_at_admission(fleet):
    r = fleet["r"]
    submit(r, "badrx", prompt="hi", max_tokens=8, guide=guide("regex", "(unclosed"))
    submit(r, "badjs", prompt="hi", max_tokens=8, guide=guide("json_schema", '{"type": "nosuchtype"}'))
    submit(r, "badlark", prompt="hi", max_tokens=8, guide=guide("lark", "start: nosuchrule"))
    wait_final(r, ["badrx", "badjs", "badlark"])
    for jid in ("badrx", "badjs", "badlark"):
        h = job(r, jid)
        last = chunks(r, jid)[-1]
        assert h["state"] == "failed" and last["finish"] == "error", (jid, h)
        assert last["status"] == 400 and last["code"] == "invalid_constraint", last
        assert last["error"].startswith("invalid ") and len(last["error"]) > 30, last


def test_worker_without_library(fleet):
    r = fleet["r"]
    submit(r, "nolib", model="plain", prompt="hi", max_tokens=8, guide=guide("regex", "a+"))
    submit(r, "nolib_free", model="plain", prompt="hi", max_tokens=4, temperature=0)
    wait_final(r, ["nolib", "nolib_free"])
    last = chunks(r, "nolib")[-1]
    assert last["finish"] == "error" and last["status"] == 400 and last["code"] == "structured_output_unavailable"
    for how in ("--llguidance", "LLMQ_LLGUIDANCE", "pip install llguidance", "/nonexistent/llguidance"):
        assert how in last["error"], last["error"]
    assert job(r, "nolib_free")["state"] == "done"


def test_resumed_constrained_job_continues_exactly(fleet):
    """A job whose first tokens an earlier attempt published (written here
    into its stream as that attempt would have) resumes with the matcher
    rebuilt from those ids: the same ids as the uninterrupted run."""
    r = fleet["r"]
    req = dict(prompt=PROMPTS[2], max_tokens=200, temperature=0.9, seed=99, guide=guide("json_schema", SCHEMA))
    submit(r, "whole", **req)
    wait_final(r, ["whole"])
    ids = ids_of(chunks(r, "whole"))
    assert len(ids) > 12
    # the earlier attempt published ids[:k] and died before their text went
    # out (text ""): the resume replays them and publishes all of the text
    k = len(ids) // 2
    # (in one transaction: the worker is running and takes the entry at once)
    pipe = r.pipeline(transaction=True)
    pipe.hset("llmq:job:{resumed}", mapping={"state": "running", "model": "stories", "attempts": 1,
                                             "created": int(time.time() * 1000)})
    pipe.xadd("llmq:job:{resumed}:out", {"c": msgpack.packb({"seq": 0, "text": "", "ids": ids[:k]})})
    pipe.xadd("llmq:req:stories", {"id": "resumed", "p": msgpack.packb({"v": 1, "id": "resumed", "model": "stories",
                                                                         **req})})
    pipe.execute()
    wait_final(r, ["resumed"])
    cs = chunks(r, "resumed")
    assert_clean_stream(cs)
    assert ids_of(cs) == ids, (ids_of(cs), ids)
    assert text_of(cs) == text_of(chunks(r, "whole"))
    assert job(r, "resumed")["state"] == "done" and int(job(r, "resumed")["attempts"]) == 2


def test_logprobs_stay_the_raw_models(fleet):
    """Under a constraint the draw is masked, the logprobs are not: they are
    the model's own (docs/protocol.md "Log-probabilities"), so a story model
    forced into digits reports words as its likely alternatives."""
    r = fleet["r"]
    submit(r, "lpdig", prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=5,
           guide=guide("regex", "[0-9]{4}"))
    wait_final(r, ["lpdig"])
    cs = chunks(r, "lpdig")
    assert re.fullmatch(r"[0-9]{4}", text_of(cs)) and job(r, "lpdig")["finish_reason"] == "stop"
    entries = [e for c in cs for e in c.get("lp", [])]
    assert len(entries) == len(ids_of(cs))
    first_logprob, _, top = entries[0]
    assert len(top) == 5 and -1e9 < first_logprob < top[0][1]   # the digit drawn was not the model's favourite
    assert any(not t[2].strip().isdigit() for t in top)          # words among the alternatives


def test_explicit_library_must_load(fleet):
    """--llguidance names what the operator wants: a path that does not load
    stops the worker at start (LLMQ_LLGUIDANCE or python's only warn)."""
    log = fleet["tmp"] / "bad.log"
    w = Worker(fleet["dir"], fleet["url"], "bad", log, "--llguidance", "/nonexistent/_lib.so")
    try:
        assert w.proc.wait(30) != 0
    finally:
        w.stop()
    text = log.read_text()
    assert "--llguidance" in text and "/nonexistent/_lib.so" in text and "no such file" in text, text
