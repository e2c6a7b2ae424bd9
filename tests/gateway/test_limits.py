"""Limits on hostile input at the gateway (docs/operations.md, "Limits on
input"): past each limit the client gets a clear OpenAI-style 4xx naming the
field, never a crash or a hang, and a request just inside every limit is
still accepted.  Every gateway is stopped with SIGTERM at the end of its test
and must exit 0 with a clean log (gwtest.Gateway.stop), so under
SANITIZER=address these are memory-error checks of the gateway as well."""
import json
import os
import pathlib
import socket

MiB = 1 << 20
PROMPT_BYTES = 8 * MiB      # PROTO_MAX_PROMPT_BYTES
STOP, STOP_LEN = 16, 1024   # PROTO_MAX_STOP, PROTO_MAX_STOP_LEN
ROLE_LEN = 64               # PROTO_MAX_ROLE_LEN
MESSAGES = 4096             # PROTO_MAX_MESSAGES
STOP_IDS = 64               # PROTO_MAX_STOP_IDS
PROMPT_IDS = 1 << 20        # PROTO_MAX_PROMPT_IDS
BODY = 4 * MiB              # --max-body-bytes default
MAX_TOKENS = 32768          # --max-tokens-limit default


def err(gw, path, body, status, param=None, needle=None):
    st, h, b = gw.request("POST", path, body if isinstance(body, (str, bytes)) else json.dumps(body))
    assert st == status, (st, b[:300])
    e = json.loads(b)["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["type"] == "invalid_request_error", e
    if param is not None:
        assert e["param"] == param, e
    if needle is not None:
        assert needle in e["message"], e
    return e


def accepted(gw, body):
    st, _, b = gw.request("POST", "/v1/jobs", body if isinstance(body, bytes) else json.dumps(body))
    assert st == 202, (st, b[:300])


def raw(gw, data, timeout=10, until_close=False):
    """Send bytes on a fresh connection; the bytes of the first response (of
    all of them up to the close when until_close)."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the gateway may refuse before reading everything
        out = b""
        while True:
            try:
                got = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not got:
                break
            out += got
            if not until_close and b"\r\n\r\n" in out and b"Content-Length" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                n = int([x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")][0].split(b":")[1])
                if len(rest) >= n:
                    break
        return out
    finally:
        s.close()


def status_of(resp):
    assert resp.startswith(b"HTTP/1.1 "), resp[:200]
    return int(resp[9:12])


def test_json_nesting(gateway):
    deep = '{"model":"m1","prompt":"x","extra":' + "[" * 10000 + "]" * 10000 + "}"
    e = err(gateway, "/v1/completions", deep, 400, needle="invalid JSON")
    assert "depth" in e["message"], e
    # nesting within the parser's bound is fine in fields the gateway ignores
    accepted(gateway, json.loads('{"model":"m1","prompt":"x","extra":' + "[" * 500 + "]" * 500 + "}"))
    assert gateway.request("GET", "/healthz")[0] == 200


def test_body_size(gateway):
    # announced too large: refused before a byte of it is read
    r = raw(gateway, f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY + 1}\r\n\r\n".encode())
    assert status_of(r) == 413 and b"too large" in r
    # exactly the limit is still read and parsed
    body = json.dumps({"model": "m1", "prompt": "x"}).encode()
    body += b" " * (BODY - len(body))
    assert len(body) == BODY
    accepted(gateway, body)


def test_prompt_bytes(start_gateway):
    g = start_gateway("--max-body-bytes", str(3 * PROMPT_BYTES))
    g.wait_ready()
    err(g, "/v1/completions", {"model": "m1", "prompt": "x" * (PROMPT_BYTES + 1)}, 400, "prompt", str(PROMPT_BYTES))
    err(g, "/v1/jobs", {"model": "m1", "prompt": "x" * (PROMPT_BYTES + 1)}, 400, "prompt")
    half = "y" * (PROMPT_BYTES // 2)
    err(g, "/v1/chat/completions", {"model": "m1", "messages": [
        {"role": "user", "content": half}, {"role": "user", "content": [{"type": "text", "text": half + "z"}]}]},
        400, "messages", str(PROMPT_BYTES))
    accepted(g, {"model": "m1", "prompt": "x" * PROMPT_BYTES})
    accepted(g, {"model": "m1", "messages": [{"role": "user", "content": half}, {"role": "user", "content": half}]})


def test_stop_strings(gateway):
    for path in ("/v1/completions", "/v1/jobs"):
        err(gateway, path, {"model": "m1", "prompt": "x", "stop": [f"s{i}" for i in range(STOP + 1)]}, 400, "stop",
            str(STOP))
        err(gateway, path, {"model": "m1", "prompt": "x", "stop": "s" * (STOP_LEN + 1)}, 400, "stop", str(STOP_LEN))
        err(gateway, path, {"model": "m1", "prompt": "x", "stop": ["ok", ""]}, 400, "stop")
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                          "stop": ["a", "b" * (STOP_LEN + 1)]}, 400, "stop")
    accepted(gateway, {"model": "m1", "prompt": "x", "stop": ["s" * STOP_LEN] * STOP})


def test_messages(gateway):
    one = {"role": "user", "content": "x"}
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [one] * (MESSAGES + 1)}, 400, "messages",
        str(MESSAGES))
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "r" * (ROLE_LEN + 1), "content": "x"}]},
        400, "messages", str(ROLE_LEN))
    err(gateway, "/v1/jobs", {"model": "m1", "messages": [{"role": "r" * (ROLE_LEN + 1), "content": "x"}]}, 400,
        "messages")
    accepted(gateway, {"model": "m1", "messages": [{"role": "r" * ROLE_LEN, "content": "x"}] * MESSAGES})


def test_token_id_arrays(gateway):
    err(gateway, "/v1/jobs", {"model": "m1", "prompt": "x", "stop_token_ids": list(range(STOP_IDS + 1))}, 400,
        "stop_token_ids", str(STOP_IDS))
    accepted(gateway, {"model": "m1", "prompt": "x", "stop_token_ids": list(range(STOP_IDS))})
    err(gateway, "/v1/jobs", {"model": "m1", "prompt_ids": [1] * (PROMPT_IDS + 1)}, 400, "prompt_ids",
        str(PROMPT_IDS))
    err(gateway, "/v1/completions", {"model": "m1", "prompt": [[1] * (PROMPT_IDS + 1)]}, 400, "prompt")
    err(gateway, "/v1/jobs", {"model": "m1", "prompt_ids": [1, -1]}, 400, "prompt_ids")
    err(gateway, "/v1/jobs", {"model": "m1", "prompt_ids": [2**31]}, 400, "prompt_ids")
    accepted(gateway, {"model": "m1", "prompt_ids": [1] * PROMPT_IDS})


def test_max_tokens(gateway, start_gateway):
    err(gateway, "/v1/completions", {"model": "m1", "prompt": "x", "max_tokens": MAX_TOKENS + 1}, 400, "max_tokens",
        str(MAX_TOKENS))
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                          "max_completion_tokens": MAX_TOKENS + 1}, 400, "max_completion_tokens")
    err(gateway, "/v1/jobs", {"model": "m1", "prompt": "x", "max_tokens": 0}, 400, "max_tokens")
    accepted(gateway, {"model": "m1", "prompt": "x", "max_tokens": MAX_TOKENS})
    # --max-tokens-limit 0: no limit of our own, still a 32-bit count
    g = start_gateway("--max-tokens-limit", "0")
    g.wait_ready()
    err(g, "/v1/jobs", {"model": "m1", "prompt": "x", "max_tokens": 2**31}, 400, "max_tokens")
    accepted(g, {"model": "m1", "prompt": "x", "max_tokens": 2**31 - 1})


def test_logprobs_and_n(gateway):
    err(gateway, "/v1/completions", {"model": "m1", "prompt": "x", "logprobs": 21}, 400, "logprobs")
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                          "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs")
    # as at OpenAI and vLLM: top_logprobs needs logprobs: true (and is range-checked without it)
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                          "top_logprobs": 3}, 400, "top_logprobs")
    err(gateway, "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                          "logprobs": False, "top_logprobs": 21}, 400, "top_logprobs")
    err(gateway, "/v1/jobs", {"model": "m1", "prompt": "x", "logprobs": 21}, 400, "logprobs")
    err(gateway, "/v1/completions", {"model": "m1", "prompt": "x", "n": 17}, 400, "n")  # 1..16


def test_request_line_and_headers(gateway):
    r = raw(gateway, b"GET /v1/jobs/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(r) == 414
    r = raw(gateway, b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + b"k" * 9000 + b"\r\n\r\n")
    assert status_of(r) == 431
    many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    r = raw(gateway, b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n")
    assert status_of(r) == 431
    r = raw(gateway, b"GET /v1/jobs/" + b"a" * 129 + b" HTTP/1.1\r\n\r\n")
    assert status_of(r) == 404
    assert gateway.request("GET", "/healthz")[0] == 200


def test_non_utf8_and_long_paths_get_404(gateway):
    """Error messages quote the path; a byte that is not UTF-8, or a message
    cut inside a character, used to make the JSON encoder refuse the message
    and the client got 500 "out of memory".  Now: 404 with valid JSON, bad
    bytes as U+FFFD, a cut character left out."""
    e_acute = "\u00e9".encode()
    cases = [
        (b"/caf\xe9", "not_found", "no route for GET /caf\ufffd"),
        (b"/\xff\xfe/x", "not_found", "no route for GET /\ufffd\ufffd/x"),
        (b"/v1/nope/\xc3", "not_found", "no route for GET /v1/nope/\ufffd"),
        (b"/v1/models/m\xff", "model_not_found", "The model 'm\ufffd' does not exist"),
        (b"/v1/jobs/\xe9/events", "job_not_found", "no job with id '\ufffd'"),
        # 17 bytes of "no route for GET ", then the path: byte 1023 of the message is inside an e-acute
        (b"/" + e_acute * 600, "not_found", "no route for GET /" + "\u00e9" * 502),
    ]
    for path, code, message in cases:
        r = raw(gateway, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(r) == 404, (path[:40], r[:300])
        e = json.loads(r.partition(b"\r\n\r\n")[2].decode("utf-8"))["error"]
        assert set(e) == {"message", "type", "param", "code"}, e
        assert e["code"] == code and e["message"] == message, (path[:40], e)
    assert gateway.request("GET", "/healthz")[0] == 200


def test_head_request_gets_no_body(gateway):
    # a body after the head would be read as the next response on this connection
    r = raw(gateway, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n", until_close=True)
    first, _, rest = r.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 405") and b"Content-Length: " in first, r
    assert rest.startswith(b"HTTP/1.1 200"), r


def test_fuzz_corpus_against_real_gateway(gateway):
    """Every committed HTTP fuzz seed and regression, sent to a real gateway on
    a real Redis: each connection gets well-formed HTTP responses (or none,
    for bytes that never complete a request), and the gateway stays up."""
    root = pathlib.Path(os.environ.get("LLMQ_ROOT", pathlib.Path(__file__).resolve().parents[2]))
    files = sorted((root / "tests/fuzz/corpus/http").iterdir())
    reg = root / "tests/fuzz/regressions/http"
    if reg.is_dir():
        files += sorted(reg.iterdir())
    assert files
    for f in files:
        data = f.read_bytes()
        s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        try:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            out = b""
            while True:
                try:
                    got = s.recv(65536)
                except OSError:
                    break
                if not got:
                    break
                out += got
        finally:
            s.close()
        assert out == b"" or out.startswith(b"HTTP/1.1 "), (f.name, out[:200])
    assert gateway.request("GET", "/healthz")[0] == 200
