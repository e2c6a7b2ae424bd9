"""OpenAI `logprobs` end to end — real redis-server, real llmq-worker on
stories260K, real llmq-gateway, the official `openai` package as the client.

Golden values come from ../shared/models/stories260K/reference_logits.jsonl
(logits of an independent numpy implementation after each prompt): their
log_softmax, computed here in double, must equal the first generated token's
logprob and its top 5 alternatives (ids through the job API, values through
the OpenAI API) within 1e-4.  Token strings are checked against pieces made
here from tokenizer.json's vocabulary, not by llmq.  Also: chat, streaming
(the per-chunk lists add up to one entry per generated token), logprobs that
ignore the sampling settings (they are the model's raw distribution, as
vLLM's default), a job resumed on another worker after kill -9 (its new
chunks still carry logprobs, equal to an uninterrupted run's), a worker
without a tokenizer, and the 400s for bad values."""
import json
import math
import re
import time

import openai
import pytest

from worker_util import Gateway, Worker, chunks, connect, ids_of, job, submit, wait_final
from llmqtest import FIXTURES

TOL = 1e-4


def golden(shared_dir):
    """[(prompt, prompt_ids, log_softmax list)] of reference_logits.jsonl."""
    out = []
    for line in (shared_dir / "models" / "stories260K" / "reference_logits.jsonl").read_text().splitlines():
        ref = json.loads(line)
        lg = ref["logits"]
        mx = max(lg)
        lse = mx + math.log(sum(math.exp(x - mx) for x in lg))
        out.append((ref["prompt"], ref["prompt_ids"], [x - lse for x in lg]))
    return out


def top_ids(lsm, n):
    return sorted(range(len(lsm)), key=lambda i: (-lsm[i], i))[:n]


def pieces(model_dir):
    """id -> the bytes a token adds to a text (SentencePiece with byte fallback)."""
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    out = {}
    for tok, i in tj["model"]["vocab"].items():
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", tok)
        out[i] = bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode()
    for t in tj.get("added_tokens", []):
        out[t["id"]] = t["content"].encode()
    return out


def token_string(b):
    """The gateway's token string of piece bytes (docs/protocol.md)."""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "".join(f"\\x{x:02x}" if x >= 0x80 else chr(x) for x in b)


@pytest.fixture
def stack(redis_server, stories, tmp_path):
    d, refs = stories
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--chat-template", "llama-2")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
    try:
        yield d, refs, gw, client
    finally:
        gw.stop()
        w.stop()


def job_logprobs(gw, resp_id):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    c.request("GET", "/v1/jobs/" + resp_id.split("-", 1)[1])
    r = c.getresponse()
    assert r.status == 200
    return json.loads(r.read())["logprobs"]


def check_consistent(lp, text, n_tokens):
    """Invariants of a greedy completion's logprobs."""
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n_tokens
    off = 0
    for tok, v, top, o in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
        assert v <= 0
        assert all(x <= 0 for x in top.values())
        assert top[tok] == v                 # the sampled token's own entry
        assert max(top.values()) == v        # greedy: it is the top-1 alternative
        assert o == off
        off += len(tok)
    assert "".join(lp.tokens) == text


def test_completions_top5_match_reference(stack, shared_dir):
    d, refs, gw, client = stack
    pc = pieces(d)
    for prompt, prompt_ids, lsm in golden(shared_dir):
        best = top_ids(lsm, 5)
        r = client.completions.create(model="stories", prompt=prompt, max_tokens=16, temperature=0, logprobs=5)
        ch = r.choices[0]
        assert r.usage.prompt_tokens == len(prompt_ids)  # the same prompt as the reference's
        ref = next(x for x in refs if x["prompt"] == prompt)
        assert ch.text == ref["completion"][:len(ch.text)] and ch.text
        lp = ch.logprobs
        check_consistent(lp, ch.text, r.usage.completion_tokens)
        # first token: the golden values, the golden top-5 (strings here, ids below)
        assert lp.tokens[0] == token_string(pc[best[0]])
        assert abs(lp.token_logprobs[0] - lsm[best[0]]) < TOL
        top = lp.top_logprobs[0]
        assert len(top) == 5
        for i in best:
            assert abs(top[token_string(pc[i])] - lsm[i]) < TOL
        # the same job through the job API: ids, order, values and bytes
        jl = job_logprobs(gw, r.id)
        assert len(jl) == r.usage.completion_tokens
        first = jl[0]
        assert first["id"] == best[0] and abs(first["logprob"] - lsm[best[0]]) < TOL
        assert [t["id"] for t in first["top_logprobs"]] == best
        for t in first["top_logprobs"]:
            assert abs(t["logprob"] - lsm[t["id"]]) < TOL
            assert bytes(t["bytes"]) == pc[t["id"]]
        for e in jl:
            assert e["top_logprobs"][0]["id"] == e["id"] and e["top_logprobs"][0]["logprob"] == e["logprob"]


def test_logprobs_are_raw_whatever_the_sampling(stack, shared_dir):
    """Penalties, temperature and top-k change what is drawn, not the
    reported distribution: the first token's top 5 are still the golden ones."""
    d, refs, gw, client = stack
    prompt, prompt_ids, lsm = golden(shared_dir)[1]
    best = top_ids(lsm, 5)
    r = client.completions.create(model="stories", prompt=prompt, max_tokens=8, temperature=1.5, top_p=0.9,
                                  seed=5, logprobs=5, extra_body={"top_k": 3, "repetition_penalty": 1.8})
    jl = job_logprobs(gw, r.id)
    assert [t["id"] for t in jl[0]["top_logprobs"]] == best
    assert abs(jl[0]["logprob"] - lsm[jl[0]["id"]]) < TOL
    for e in jl:
        assert e["logprob"] <= 0
        assert all(a["logprob"] >= b["logprob"] for a, b in zip(e["top_logprobs"], e["top_logprobs"][1:]))
        same = [t for t in e["top_logprobs"] if t["id"] == e["id"]]
        assert all(t["logprob"] == e["logprob"] for t in same)


def test_not_asked_is_null_and_zero_gives_the_token_only(stack):
    d, refs, gw, client = stack
    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None
    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=4, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(list(t) == [tok] for t, tok in zip(lp.top_logprobs, lp.tokens))
    c = client.chat.completions.create(model="stories", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       temperature=0)
    assert c.choices[0].logprobs is None


def test_streaming_completions(stack, shared_dir):
    d, refs, gw, client = stack
    prompt, prompt_ids, lsm = golden(shared_dir)[0]
    whole = client.completions.create(model="stories", prompt=prompt, max_tokens=24, temperature=0, logprobs=3)
    stream = client.completions.create(model="stories", prompt=prompt, max_tokens=24, temperature=0, logprobs=3,
                                       stream=True, stream_options={"include_usage": True})
    tokens, values, tops, offsets, text, usage = [], [], [], [], "", None
    for ev in stream:
        if ev.usage:
            usage = ev.usage
        if not ev.choices:
            continue
        ch = ev.choices[0]
        text += ch.text
        if ch.logprobs:
            assert len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == len(ch.logprobs.text_offset)
            tokens += ch.logprobs.tokens
            values += ch.logprobs.token_logprobs
            tops += ch.logprobs.top_logprobs
            offsets += ch.logprobs.text_offset
    assert usage.completion_tokens == 24 == len(tokens)
    assert text == whole.choices[0].text
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset  # offsets carry on across chunks
    for a, b in zip(values, whole.choices[0].logprobs.token_logprobs):
        assert abs(a - b) < 1e-9
    assert abs(values[0] - max(lsm)) < TOL
    assert tops[0] == whole.choices[0].logprobs.top_logprobs[0]


def test_chat_and_chat_streaming(stack):
    d, refs, gw, client = stack
    msgs = [{"role": "user", "content": "Once upon a time"}]
    r = client.chat.completions.create(model="stories", messages=msgs, max_tokens=20, temperature=0, logprobs=True,
                                       top_logprobs=4)
    ch = r.choices[0]
    content = ch.logprobs.content
    assert len(content) == r.usage.completion_tokens == 20
    assert "".join(t.token for t in content) == ch.message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 4
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob
        assert all(a.logprob >= b.logprob for a, b in zip(t.top_logprobs, t.top_logprobs[1:]))
        assert all(bytes(a.bytes).decode() == a.token for a in t.top_logprobs)
    # logprobs without top_logprobs: the token alone
    r0 = client.chat.completions.create(model="stories", messages=msgs, max_tokens=5, temperature=0, logprobs=True)
    assert [t.top_logprobs for t in r0.choices[0].logprobs.content] == [[]] * 5
    assert [t.token for t in r0.choices[0].logprobs.content] == [t.token for t in content[:5]]
    # streaming: the deltas' lists add up to the same tokens
    stream = client.chat.completions.create(model="stories", messages=msgs, max_tokens=20, temperature=0,
                                            logprobs=True, top_logprobs=4, stream=True,
                                            stream_options={"include_usage": True})
    got, text, usage = [], "", None
    for ev in stream:
        if ev.usage:
            usage = ev.usage
        if ev.choices:
            text += ev.choices[0].delta.content or ""
            if ev.choices[0].logprobs:
                got += ev.choices[0].logprobs.content
    assert usage.completion_tokens == len(got) == 20
    assert text == ch.message.content
    assert [t.token for t in got] == [t.token for t in content]
    assert all(abs(a.logprob - b.logprob) < 1e-9 for a, b in zip(got, content))


def test_bad_values_are_400(stack):
    d, refs, gw, client = stack
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        lambda: client.completions.create(model="stories", prompt="x", logprobs=21),
        lambda: client.completions.create(model="stories", prompt="x", logprobs=-1),
        lambda: client.chat.completions.create(model="stories", messages=msgs, logprobs=True, top_logprobs=21),
        lambda: client.chat.completions.create(model="stories", messages=msgs, top_logprobs=2),
        lambda: client.chat.completions.create(model="stories", messages=msgs, logprobs=False, top_logprobs=2),
    ]
    params = ["logprobs", "logprobs", "top_logprobs", "top_logprobs", "top_logprobs"]
    words = ["between 0 and 20", "between 0 and 20", "between 0 and 20", "requires 'logprobs': true",
             "requires 'logprobs': true"]
    for make, param, word in zip(cases, params, words):
        with pytest.raises(openai.BadRequestError) as e:
            make()
        assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
        assert word in e.value.body["message"], e.value.body
    # top_logprobs 0 without logprobs is harmless (OpenAI, vLLM): no logprobs
    r = client.chat.completions.create(model="stories", messages=msgs, max_tokens=2, top_logprobs=0)
    assert r.choices[0].logprobs is None


def test_resumed_job_keeps_logprobs(redis_server, stories, tmp_path):
    """kill -9 in the middle of jobs that asked for logprobs: the worker that
    resumes them puts `lp` on every new chunk, one entry per id, and the
    values are those of an uninterrupted run."""
    d, refs = stories
    r = connect(redis_server.url)
    reqs = {f"k{i}": dict(prompt=refs[i % 8]["prompt"], max_tokens=250, ignore_eos=True, logprobs=2,
                          **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.7, "seed": 3 + i}))
            for i in range(8)}
    w = Worker(d, redis_server.url, "stories", tmp_path / "ref.log", "--max-num-seqs", 4)
    for jid, req in reqs.items():
        submit(r, "u" + jid, **req)
    wait_final(r, ["u" + j for j in reqs], timeout=120)
    w.stop()
    expected = {jid: chunks(r, "u" + jid) for jid in reqs}
    w1 = Worker(d, redis_server.url, "stories", tmp_path / "w1.log", "--max-num-seqs", 4, "--consumer", "w1")
    for jid, req in reqs.items():
        submit(r, jid, **req)
    deadline = time.time() + 30
    while time.time() < deadline and sum(len(chunks(r, j)) > 0 for j in reqs) < 4:
        time.sleep(0.01)
    w1.kill()
    started = [j for j in reqs if chunks(r, j)]
    assert any(not chunks(r, j)[-1].get("finish") for j in started), "kill came too late to test a resume"
    w2 = Worker(d, redis_server.url, "stories", tmp_path / "w2.log", "--max-num-seqs", 4, "--consumer", "w2",
                "--claim-idle-ms", 300)
    try:
        wait_final(r, list(reqs), timeout=120)
        resumed = 0
        for jid in reqs:
            cs = chunks(r, jid)
            assert all(len(c["lp"]) == len(c["ids"]) for c in cs), jid
            lps = [e for c in cs for e in c["lp"]]
            want = [e for c in expected[jid] for e in c["lp"]]
            assert ids_of(cs) == ids_of(expected[jid]) and len(lps) == len(want) == 250
            for a, b in zip(lps, want):
                assert abs(a[0] - b[0]) < 1e-6 and [t[0] for t in a[2]] == [t[0] for t in b[2]]
                assert a[1] == b[1]  # the piece bytes
            resumed += int(job(r, jid)["attempts"]) == 2
        assert resumed > 0
    finally:
        w2.stop()


def test_without_tokenizer_ids_only(redis_server, tmp_path):
    """A model folder without tokenizer.json: logprobs still come, with the
    pieces unknown (nil); the gateway names such tokens token_id:<id>."""
    d = FIXTURES / "hf" / "llama_mha"
    exp = json.loads((d / "expected.json").read_text())["cases"][0]
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "mha", tmp_path / "w.log")
    gw = Gateway(redis_server.url, tmp_path / "gw.log")
    try:
        submit(r, "p1", model="mha", prompt_ids=exp["prompt_ids"], max_tokens=3, temperature=0, ignore_eos=True,
               logprobs=2)
        wait_final(r, ["p1"])
        cs = chunks(r, "p1")
        lps = [e for c in cs for e in c["lp"]]
        assert len(lps) == 3 and all(e[1] is None and all(t[2] is None for t in e[2]) for e in lps)
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
        out = client.completions.create(model="mha", prompt=exp["prompt_ids"], max_tokens=3, temperature=0,
                                        logprobs=1, extra_body={"ignore_eos": True})
        ids = exp["greedy"][:3]
        assert out.choices[0].logprobs.tokens == [f"token_id:{i}" for i in ids]
    finally:
        gw.stop()
        w.stop()
