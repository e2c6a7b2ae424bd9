"""What the worker tells clients, end to end: real redis-server, real
llmq-worker on stories260K, real llmq-gateway, the official `openai` package
and http.client as clients.

- A prompt with no room for one token, or prompt + max_tokens past the
  model's context, is a 400 with vLLM's message (and OpenAI's code
  `context_length_exceeded` on the job's error chunk), never a completion
  cut short.
- A model without a chat template (stories260K has none) serves chat with
  the documented default, chatml, and the worker's start-up log says so.
- No error a client reads names a file on the server.
- POST /tokenize and /detokenize in vLLM's shapes.

Expected values come from outside llmq: the token ids of
reference_greedy.jsonl (Hugging Face `tokenizers` on the same tokenizer.json),
the Python `tokenizers` package on the chatml text written out here, and
config.json's max_position_embeddings.  One fleet for the whole module."""
import http.client
import json
import time

import openai
import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, chunks, connect, job

CTX = 512  # stories260K config.json max_position_embeddings


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("wapi")
    d = shared_dir / "models" / "stories260K"
    refs = [json.loads(x) for x in (d / "reference_greedy.jsonl").read_text().splitlines()]
    assert json.loads((d / "config.json").read_text())["max_position_embeddings"] == CTX
    # the same model, whose tokenizer_config.json has a template of no family llmq knows
    odd = tmp / "odd-model"
    odd.mkdir()
    for f in d.iterdir():
        if f.is_file() and f.name != "tokenizer_config.json":
            (odd / f.name).symlink_to(f)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (odd / "tokenizer_config.json").write_text(json.dumps(cfg))
    srv = RedisServer(tmp, free_port()).start()
    procs = []
    try:
        procs.append(Worker(d, srv.url, "stories", tmp / "w.log"))
        procs.append(Worker(odd, srv.url, "odd", tmp / "odd.log"))
        gw = Gateway(srv.url, tmp / "gw.log", "--models", "stories,odd")
        procs.append(gw)
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield dict(dir=d, odd=odd, refs=refs, gw=gw, client=client, r=connect(srv.url), log=tmp / "w.log")
    finally:
        for p in reversed(procs):
            p.stop()
        srv.stop()


def post(gw, path, body):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def get(gw, path):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def wait_state(r, jid, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job(r, jid).get("state") in ("done", "failed", "cancelled", "expired"):
            return job(r, jid)
        time.sleep(0.02)
    raise AssertionError(f"job {jid} did not end")


def test_context_length_is_a_400_with_vllm_message(fleet):
    client, refs = fleet["client"], fleet["refs"]
    prompt, ids = refs[0]["prompt"], refs[0]["prompt_ids"]
    n = len(ids)
    # prompt + max_tokens past the context: refused, not cut at the context
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories", prompt=prompt, max_tokens=CTX - n + 1)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    assert e.value.body["message"] == (
        f"This model's maximum context length is {CTX} tokens. However, you requested {CTX + 1} tokens "
        f"({n} in the messages, {CTX - n + 1} in the completion). Please reduce the length of the messages "
        f"or completion.")
    # exactly at the context: runs (a prompt of ids, so its length is known here)
    at = [1] + [403] * (CTX - 9)
    r = client.completions.create(model="stories", prompt=at, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == CTX - 8 and r.usage.completion_tokens == 8
    # a prompt with no room for one token, chat: the message form without max_tokens
    long_prompt = [1] + [403] * CTX
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories", prompt=long_prompt, max_tokens=1)
    assert e.value.body["message"] == (
        f"This model's maximum context length is {CTX} tokens. However, you requested {CTX + 1} tokens in the "
        f"messages, Please reduce the length of the messages.")
    # through the job API: the record and the error chunk carry it, the chunk with its code
    st, body = post(fleet["gw"], "/v1/jobs", {"model": "stories", "prompt": prompt, "max_tokens": CTX})
    assert st == 202
    rec = wait_state(fleet["r"], body["id"])
    assert rec["state"] == "failed" and rec["error"].startswith(f"This model's maximum context length is {CTX}")
    last = chunks(fleet["r"], body["id"])[-1]
    assert last["finish"] == "error" and last["status"] == 400 and last["code"] == "context_length_exceeded"
    st, j = get(fleet["gw"], "/v1/jobs/" + body["id"])
    assert st == 200 and j["status"] == "failed" and f"you requested {n + CTX} tokens" in j["error"]


def test_chat_without_template_uses_documented_default(fleet):
    client = fleet["client"]
    r = client.chat.completions.create(model="stories", messages=[{"role": "user", "content": "Once upon a time"}],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    # the prompt is chatml as transformers' old default rendered it, encoded without BOS
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(fleet["dir"] / "tokenizer.json"))
    want = tk.encode("<|im_start|>user\nOnce upon a time<|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False).ids
    assert r.usage.prompt_tokens == len(want)
    st, tok = post(fleet["gw"], "/tokenize", {"model": "stories", "messages": [{"role": "user",
                                                                                 "content": "Once upon a time"}]})
    assert st == 200 and tok["tokens"] == want
    log = fleet["log"].read_text()
    assert "chat template: chatml (the default: the model has no chat template" in log


def test_errors_name_no_server_path(fleet):
    client, odd = fleet["client"], fleet["odd"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="odd", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    msg = e.value.body["message"]
    assert "--chat-template" in msg                      # says what to do
    assert "/" not in msg.replace("--chat-template", "") and str(odd) not in msg and "tokenizer.json" not in msg
    # the worker's log keeps where it was
    assert str(odd) in (odd.parent / "odd.log").read_text()


def test_tokenize_detokenize(fleet):
    gw, refs = fleet["gw"], fleet["refs"]
    for ref in refs[:3]:
        st, body = post(gw, "/tokenize", {"model": "stories", "prompt": ref["prompt"]})
        assert st == 200
        assert body == {"count": len(ref["prompt_ids"]), "max_model_len": CTX, "tokens": ref["prompt_ids"],
                        "token_strs": None}
        st, body = post(gw, "/tokenize", {"model": "stories", "prompt": ref["prompt"], "add_special_tokens": False})
        assert st == 200 and body["tokens"] == ref["prompt_ids"][1:]        # without the BOS
        st, body = post(gw, "/detokenize", {"model": "stories", "tokens": ref["prompt_ids"][1:]})
        assert st == 200 and body == {"prompt": ref["prompt"]}
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(fleet["dir"] / "tokenizer.json"))
    for ids in (refs[0]["output_ids"], [1] + refs[1]["output_ids"] + [2], []):
        st, body = post(gw, "/detokenize", {"model": "stories", "tokens": ids})
        assert st == 200 and body == {"prompt": tk.decode(ids, skip_special_tokens=False)}
    # refusals: an id outside the vocabulary (the worker's 400), bad shapes, an unknown model
    st, body = post(gw, "/detokenize", {"model": "stories", "tokens": [5, 100000]})
    assert st == 400 and "outside the vocabulary" in body["error"]["message"]
    st, body = post(gw, "/detokenize", {"model": "stories", "tokens": "12"})
    assert st == 400 and body["error"]["param"] == "tokens"
    st, body = post(gw, "/tokenize", {"model": "stories", "prompt": "x", "add_special_tokens": "yes"})
    assert st == 400 and body["error"]["param"] == "add_special_tokens"
    st, body = post(gw, "/tokenize", {"model": "nope", "prompt": "x"})
    assert st == 404 and body["error"]["code"] == "model_not_found"
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request("GET", "/tokenize")
    assert c.getresponse().status == 405
    c.close()


def test_add_special_tokens_reaches_the_worker(fleet):
    """vLLM's `add_special_tokens` on completions and chat (docs/protocol.md,
    the request's field): the prompt is encoded with or without BOS, as the
    usage's prompt_tokens shows; absent, the defaults (BOS for a prompt, none
    for messages)."""
    client, ref = fleet["client"], fleet["refs"][0]
    n = len(ref["prompt_ids"])  # Hugging Face's encoding, with the BOS
    for extra, want in (({}, n), ({"add_special_tokens": False}, n - 1), ({"add_special_tokens": True}, n)):
        r = client.completions.create(model="stories", prompt=ref["prompt"], max_tokens=1, temperature=0,
                                      extra_body=extra)
        assert r.usage.prompt_tokens == want, extra
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(fleet["dir"] / "tokenizer.json"))
    text = "<|im_start|>user\nOnce upon a time<|im_end|>\n<|im_start|>assistant\n"  # chatml, the default template
    msgs = [{"role": "user", "content": "Once upon a time"}]
    for extra, bos in (({}, False), ({"add_special_tokens": True}, True), ({"add_special_tokens": False}, False)):
        r = client.chat.completions.create(model="stories", messages=msgs, max_tokens=1, temperature=0,
                                           extra_body=extra)
        assert r.usage.prompt_tokens == len(tk.encode(text, add_special_tokens=bos).ids), extra
    # the job API takes it too; a value that is not a boolean is refused
    st, body = post(fleet["gw"], "/v1/jobs", {"model": "stories", "prompt": ref["prompt"], "max_tokens": 1,
                                              "add_special_tokens": False})
    assert st == 202 and wait_state(fleet["r"], body["id"])["prompt_tokens"] == str(n - 1)
    st, body = post(fleet["gw"], "/v1/completions", {"model": "stories", "prompt": "x", "add_special_tokens": 1})
    assert st == 400 and body["error"]["param"] == "add_special_tokens"
