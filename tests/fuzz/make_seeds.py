#!/usr/bin/env python3
"""Regenerate the committed seed corpora of tests/fuzz/corpus/<target>/.

    .venv/bin/python tests/fuzz/make_seeds.py

Seeds are small and meaningful: valid inputs of each kind plus a few edge
cases (limits, wrong types, truncation).  Deterministic: running it twice
writes the same files.  It only (re)writes files named here; files added by
hand (or minimized from a fuzz run) stay.  Needs msgpack (the test venv).
"""
import json
import os
import pathlib
import struct

import msgpack

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
FIX = ROOT / "tests" / "fixtures"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def js(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------ protocol
def protocol():
    p = lambda **kw: msgpack.packb(kw, use_bin_type=True)  # noqa: E731
    put("protocol", "req_prompt", p(v=1, id="0190f3c2a1b2", model="m1", prompt="Once upon a time", max_tokens=16,
                                    temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=42, stop=["\n\n", "END"],
                                    stop_token_ids=[2, 7], ignore_eos=False, repetition_penalty=1.1,
                                    presence_penalty=0.5, frequency_penalty=-0.5, logprobs=3,
                                    deadline_ms=1893456000000, priority=5))
    put("protocol", "req_messages", p(v=1, model="m1", messages=[{"role": "system", "content": "Be brief."},
                                                                  {"role": "user", "content": "Hi 🙂"}], stop="x"))
    put("protocol", "req_ids", p(v=1, model="m1", prompt_ids=[1, 450, 4996, 17354], max_tokens=1, seed=-1))
    put("protocol", "req_nils", p(v=1, model="m1", prompt="x", temperature=None, stop=None, top_k=None))
    put("protocol", "req_two_prompts", p(v=1, model="m1", prompt="x", prompt_ids=[1]))
    put("protocol", "req_wrong_types", p(v=1, model="m1", prompt="x", temperature="hot", stop=[1], max_tokens=1.5))
    put("protocol", "req_v2", p(v=2, model="m1", prompt="x"))
    put("protocol", "req_guide", p(v=1, model="m1", prompt="x", guide={"type": "json_schema",
                                                                       "data": '{"type":"object"}'}))
    put("protocol", "req_guide_bad", p(v=1, model="m1", prompt="x", guide={"type": "xml", "data": 1}))
    put("protocol", "req_float32", b"\x83\xa1v\x01\xa6prompt\xa1x\xabtemperature\xca\x3f\x00\x00\x00")
    put("protocol", "req_huge_array", b"\x81\xaaprompt_ids\xdd\xff\xff\xff\xff")
    put("protocol", "req_huge_map", b"\xdf\xff\xff\xff\xff")
    put("protocol", "req_truncated", p(v=1, model="m1", prompt="Once upon a time")[:-5])
    put("protocol", "req_trailing", p(v=1, model="m1", prompt="x") + b"\xc0")
    put("protocol", "req_nested", b"\x81\xa1x" + b"\x91" * 200 + b"\xc0")
    put("protocol", "chunk_text", p(seq=0, text="Hello", ids=[15043]))
    put("protocol", "chunk_final", p(seq=7, text="", ids=[], finish="stop",
                                     usage={"prompt_tokens": 5, "completion_tokens": 7}))
    put("protocol", "chunk_error", p(seq=0, text="", ids=[], finish="error", error="prompt too long", status=400))
    put("protocol", "chunk_logprobs", p(seq=3, text="", ids=[403, 229], lp=[
        [-0.03, b" Once", [[403, -0.03, b" Once"], [261, -3.5, b" a"]]],
        [float("-inf"), b"\xe2", [[229, -1.0, None]]]]))
    put("protocol", "chunk_logprobs_short", p(seq=0, text="x", ids=[1, 2], lp=[[-0.5, b"x", []]]))


# ------------------------------------------------------------------ gateway bodies
def gw_request():
    C, CH, J = b"\x00", b"\x01", b"\x02"
    put("gw_request", "completions_full", C + js({
        "model": "m1", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0.8, "top_p": 0.95,
        "top_k": -1, "min_p": 0.1, "seed": -5, "stop": ["\n", "The end"], "stop_token_ids": [2],
        "presence_penalty": 0.2, "frequency_penalty": 0.1, "repetition_penalty": 1.05, "logprobs": 2,
        "stream": True, "stream_options": {"include_usage": True}, "n": 1, "echo": False, "user": "u1"}).encode())
    put("gw_request", "completions_ids", C + js({"model": "org/model-7b", "prompt": [1, 2, 3], "max_tokens": 1}).encode())
    put("gw_request", "completions_nested_ids", C + js({"model": "m1", "prompt": [[1, 2]], "stop": "x"}).encode())
    put("gw_request", "chat_parts", CH + js({
        "model": "m1", "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 5,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                     {"role": "assistant", "content": None}, {"role": "user", "content": "ü€𝄞"}]}).encode())
    put("gw_request", "jobs_ids", J + js({"model": "m1", "prompt_ids": [1, 2, 3], "deadline_ms": 1893456000000,
                                           "priority": -3, "ignore_eos": True, "max_tokens": 4}).encode())
    put("gw_request", "jobs_timeout", J + js({"model": "m1", "prompt": "x", "timeout_ms": 5000}).encode())
    put("gw_request", "jobs_messages", J + js({"model": "m1", "messages": [{"role": "user", "content": "x"}]}).encode())
    put("gw_request", "bad_duplicate_key", C + b'{"model":"m1","prompt":"a","prompt":"b"}')
    put("gw_request", "bad_deep", C + b'{"model":"m1","prompt":"x","extra":' + b"[" * 3000 + b"]" * 3000 + b"}")
    put("gw_request", "bad_types", C + js({"model": "m1", "prompt": "x", "max_tokens": "9", "stop": [1]}).encode())
    put("gw_request", "bad_model", CH + js({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode())
    put("gw_request", "bad_numbers", C + b'{"model":"m1","prompt":"x","max_tokens":1e400,"seed":99999999999999999999}')
    put("gw_request", "limit_stop_count", C + js({"model": "m1", "prompt": "x", "stop": ["s%d" % i for i in range(17)]}).encode())
    put("gw_request", "limit_stop_len", C + js({"model": "m1", "prompt": "x", "stop": ["y" * 1100]}).encode())
    put("gw_request", "limit_role_len", CH + js({"model": "m1", "messages": [{"role": "r" * 100, "content": "x"}]}).encode())
    put("gw_request", "unicode_escapes", C + b'{"model":"m1","prompt":"\\ud83d\\ude00 \\u00e9 \\ud800"}')
    put("gw_request", "empty", C)
    put("gw_request", "chat_structured", CH + js({"model": "m1", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
            "type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]}}}}).encode())
    put("gw_request", "guided_choice", C + js({"model": "m1", "prompt": "x", "guided_choice": ["a\"b", "ü\n", "c"]}).encode())
    put("gw_request", "guided_json_not_schema", CH + js({"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                                         "guided_json": "[1]"}).encode())
    put("gw_request", "jobs_guided_two", J + js({"model": "m1", "prompt": "x", "guided_regex": "[0-9]+",
                                                  "guided_json": "{}"}).encode())


# ------------------------------------------------------------------ HTTP
def http():
    auth = "Authorization: Bearer fuzz-key\r\n"

    def post(path, body, extra=""):
        b = js(body).encode() if not isinstance(body, bytes) else body
        return (f"POST {path} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n{extra}"
                f"Content-Length: {len(b)}\r\n\r\n").encode() + b

    put("http", "completions", post("/v1/completions", {"model": "m1", "prompt": "Hello", "max_tokens": 4}))
    put("http", "chat_stream", post("/v1/chat/completions",
                                    {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}))
    put("http", "chat_bad", post("/v1/chat/completions", {"model": "m1", "messages": "Hi"}))
    put("http", "jobs_expect", post("/v1/jobs", {"model": "m1", "prompt_ids": [1, 2]}, "Expect: 100-continue\r\n"))
    body = js({"model": "m1", "prompt": "chunked"}).encode()
    put("http", "jobs_chunked", (f"POST /v1/jobs HTTP/1.1\r\nHost: gw\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                                 f"{len(body) - 5:x}\r\n").encode() + body[:-5] + b"\r\n5\r\n" + body[-5:] +
        b"\r\n0\r\n\r\n")
    put("http", "job_get", f"GET /v1/jobs/0190f3c2a1b2 HTTP/1.1\r\nHost: gw\r\n{auth}\r\n")
    put("http", "job_events", f"GET /v1/jobs/0190f3c2a1b2/events?last_event_id=3 HTTP/1.1\r\nHost: gw\r\n{auth}"
                              f"Last-Event-ID: 4\r\n\r\n")
    put("http", "job_delete", f"DELETE /v1/jobs/0190f3c2a1b2 HTTP/1.1\r\nHost: gw\r\n{auth}\r\n")
    put("http", "ops_pipelined", "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\nGET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n"
                                 "GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n"
                                 f"GET /v1/models HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
                                 f"GET /v1/models/m1 HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n")
    put("http", "no_auth", "POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
    put("http", "bad_auth", "GET /v1/models HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n")
    put("http", "too_large", f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Length: 99999999\r\n\r\n{{")
    put("http", "http10", "GET /healthz HTTP/1.0\r\n\r\n")
    put("http", "head_and_405", f"HEAD /healthz HTTP/1.1\r\n\r\nPUT /v1/jobs HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n")
    put("http", "malformed", "GET /healthz HTTP/9.9 what\r\n\r\n")
    put("http", "absolute_url", "GET http://gw:8080/healthz?x=1#frag HTTP/1.1\r\n\r\n")
    put("http", "long_header", f"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {'k' * 9000}\r\n\r\n")


# ------------------------------------------------------------------ URLs
def url():
    for i, u in enumerate([
        "redis://127.0.0.1:6379/0", "redis://localhost", "redis://:secret@redis:6380/2",
        "redis://user:p%40ss%2Fw@[::1]:7000/15", "redis://user@host", "unix:///run/redis.sock?db=3",
        "unix:///tmp/r.sock", "rediss://host:6380", "redis://host:0", "redis://host:65536",
        "redis://[::1", "redis://h/1#frag", "redis://a:b:c@d@e:1/2", "redis://h:6379/-1", "redis://%zz@h",
        "redis://u:%00@h", "http://example.com", "", "redis://" + "h" * 300,
        "redis-sentinel://:pw@s1:26379,[::1]:26380,s3/mymaster/2", "redis-sentinel://a,,b/m",
        "redis-sentinel://h:1/m?db=1",
    ]):
        put("url", "url%02d" % i, u)


# ------------------------------------------------------------------ config.json
def config():
    for d in sorted((FIX / "hf").iterdir()):
        if (d / "config.json").exists():
            put("config", d.name, (d / "config.json").read_bytes())
    base = json.loads((FIX / "hf" / "llama_mha" / "config.json").read_text())
    put("config", "eos_list", js(dict(base, eos_token_id=[1, 2, 3], head_dim=None)))
    put("config", "bad_heads", js(dict(base, num_attention_heads=3, num_key_value_heads=2)))
    put("config", "bad_arch", js(dict(base, architectures=["GPT2LMHeadModel"])))
    put("config", "huge", js(dict(base, hidden_size=2147483647, vocab_size=-1, rope_theta=1e308)))
    put("config", "rope_linear", js(dict(base, rope_scaling={"type": "linear", "factor": 2.0})))


# ------------------------------------------------------------------ safetensors
def st_file(tensors, data, meta=None, pad=b""):
    h = dict(tensors)
    if meta is not None:
        h["__metadata__"] = meta
    hb = json.dumps(h, separators=(",", ":")).encode() + pad
    return struct.pack("<Q", len(hb)) + hb + data


def safetensors():
    put("safetensors", "f32", st_file({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
                                      struct.pack("<4f", 1, 2, 3, 4), {"format": "pt"}))
    put("safetensors", "mixed", st_file({
        "a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
        "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [6, 10]},
        "c": {"dtype": "I64", "shape": [1], "data_offsets": [10, 18]},
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [18, 18]},
        "scalar": {"dtype": "U8", "shape": [], "data_offsets": [18, 19]}}, bytes(range(19)), pad=b"   "))
    put("safetensors", "overlap", st_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
    put("safetensors", "past_end", st_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)))
    put("safetensors", "bad_size", st_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)))
    put("safetensors", "bad_dtype", st_file({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)))
    put("safetensors", "many_dims", st_file({"a": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}, bytes(4)))
    put("safetensors", "big_shape", st_file({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}, b""))
    put("safetensors", "hlen_huge", struct.pack("<Q", 2**64 - 1) + b"{}")
    put("safetensors", "short", b"\x02\x00\x00")


# ------------------------------------------------------------------ tokenizer.json
def trimmed(path, keep):
    """The fixture tokenizer with its vocabulary cut to `keep` ids and the merges that still apply."""
    d = json.loads(path.read_text())
    m = d["model"]
    vocab = {t: i for t, i in m["vocab"].items() if i < keep}
    merges = []
    for mg in m["merges"]:
        a, b = mg if isinstance(mg, list) else mg.split(" ", 1)
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    return js(d)


def tokenizer_load():
    for name in ["bl-llama3", "spm-bf", "bl-roberta", "falcon-like", "misc-meta", "ws-suffix"]:
        put("tokenizer_load", name, trimmed(FIX / "tokenizers" / name / "tokenizer.json", 300))
    put("tokenizer_load", "minimal", js({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                                                   "merges": ["a b"]}}))
    put("tokenizer_load", "unknown_type", js({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    put("tokenizer_load", "bad_merge", js({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]},
                                           "normalizer": {"type": "Replace", "pattern": {"Regex": "("}, "content": ""}}))
    put("tokenizer_load", "split_regex", js({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, " ": 2}, "merges": [], "unk_token": None},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{L}+|\\s+"},
                          "behavior": "Isolated", "invert": False},
        "added_tokens": [{"id": 3, "content": "<x>", "special": True, "lstrip": True, "rstrip": True,
                          "single_word": False, "normalized": False}],
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                     {"type": "Fuse"}, {"type": "Strip", "content": " ",
                                                                        "start": 1, "stop": 0}]}}))


# ------------------------------------------------------------------ encoder
def tokenizer_encode():
    texts = json.loads((FIX / "tokenizers" / "corpus.json").read_text())
    picked = [t for t in texts if 0 < len(t.encode()) <= 120][::6][:30]
    for i, t in enumerate(picked):
        put("tokenizer_encode", "text%02d" % i, bytes([(i % 6) | ((i % 4) << 6)]) + t.encode())
    put("tokenizer_encode", "specials", b"\x40<s>a</s><|begin_of_text|>b<|eot_id|><unk>[SEP]<mask>")
    put("tokenizer_encode", "invalid_utf8", b"\x01ab\xc3(\xff\xfe")
    put("tokenizer_encode", "long_run", b"\x02" + b"x" * 1500)
    put("tokenizer_encode", "bytes", b"\x01" + "\U0001F999 \u200d\ufeff\x00\x01\t".encode())


# ------------------------------------------------------------------ chat templates
def chat():
    def seed(fam, gen, bos, eos, system, jinja, msgs):
        parts = [bos, eos, system, jinja] + [x for m in msgs for x in m]
        return bytes([fam, gen]) + b"\x00".join(p.encode() for p in parts)

    conv = [("system", "Be nice."), ("user", "Hi"), ("assistant", " Hello! "), ("user", "  Bye  ")]
    for fam in range(1, 6):
        put("chat", "family%d" % fam, seed(fam, 1, "<s>", "</s>", "", "", conv))
    put("chat", "chatml_default_system", seed(4, 1, "", "<|im_end|>", "You are Qwen.", "", conv[1:]))
    put("chat", "detect_llama3", seed(0, 0, "<|begin_of_text|>", "<|eot_id|>", "",
                                      "{{ '<|start_header_id|>' }}{{ '<|eot_id|>' }}", conv))
    put("chat", "bad_alternation", seed(1, 1, "<s>", "</s>", "", "", [("user", "a"), ("user", "b")]))
    put("chat", "unicode_ws", seed(3, 0, "<s>", "</s>", "", "", [("user", "\u2003\u001c x \u3000")]))
    put("chat", "no_messages", seed(2, 1, "<s>", "</s>", "", "", []))


if __name__ == "__main__":
    for f in [protocol, gw_request, http, url, config, safetensors, tokenizer_load, tokenizer_encode, chat]:
        f()
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"seeds in {CORPUS.relative_to(ROOT)}: {sum(1 for p in CORPUS.rglob('*') if p.is_file())} files, {total} bytes")
