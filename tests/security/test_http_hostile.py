"""Hostile HTTP clients at the gateway's edge (issue 23, items 6, 11, 15),
against one real llmq-gateway, one real redis-server and the protocol test
driver (tests/gateway/fake_worker.py) for the whole module:

- header parsing is strict (RFC 9112): whitespace between a field name and
  its colon, an HTTP version other than 1.0/1.1, a repeated Authorization,
  Host or Content-Length, a Transfer-Encoding other than chunked, and both
  Transfer-Encoding and Content-Length are refused, and the connection is
  closed (nothing after them is read as a second request);
- a complete response of more than 8 MiB (the streamed-output backlog
  bound) arrives whole to a client that starts reading late and reads in
  small pieces, on the OpenAI route and on GET /v1/jobs/{id};
- the log (at debug, where the access log names every path) has no line
  longer than the documented bound and no control byte from a client."""
import json
import os
import re
import socket
import time

import pytest

from secutil import ROOT  # noqa: F401  (puts tests/ and tests/gateway on sys.path)
from fake_worker import FakeWorker
from gwtest import Gateway
from llmqtest import RedisServer, free_port

PIECE = 1 << 20          # bytes of text per chunk of the big reply
PIECES = 10              # 10 MiB of text: past the gateway's 8 MiB output backlog
LOG_LINE_MAX = 2048      # docs/operations.md: bytes of one log message, then cut (tests/unit/test_log.c)


def big_reply(req):
    if req.get("prompt") == "big":
        return [(chr(ord("a") + i) * PIECE, [100 + i]) for i in range(PIECES)], "length"
    n = req.get("max_tokens") or 4
    return [(f" t{i}", [100 + i]) for i in range(n)], "length"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    redis = RedisServer(tmp, free_port()).start()
    worker = FakeWorker(redis.url, "m1", reply_fn=big_reply).start()
    old = os.environ.get("LLMQ_LOG")
    os.environ["LLMQ_LOG"] = "debug"  # the access log (every path) is at debug
    try:
        gw = Gateway(redis.url, ["--models", "m1"], tmp)
    finally:
        if old is None:
            os.environ.pop("LLMQ_LOG")
        else:
            os.environ["LLMQ_LOG"] = old
    gw.wait_ready()
    yield gw
    try:
        gw.stop()
    finally:
        worker.stop()
        redis.stop()


def exchange(gw, raw, timeout=5):
    """Send raw bytes; return everything the gateway sends until it closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            try:
                got = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not got:
                break
            out += got
    return out


def statuses(data):
    return [int(m) for m in re.findall(rb"^HTTP/1\.1 (\d{3}) ", data, re.M)]


BAD = [
    # whitespace between a field name and its colon (RFC 9112 §5.1)
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Any\t: 1\r\n\r\n", 400),
    # a Transfer-Encoding the old parse ignored: its body was served as a second request
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
     b"1d\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n", 400),
    # versions other than 1.0 and 1.1
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    # fields that must appear once
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    # transfer codings: only chunked, never with a Content-Length
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
]


def test_lenient_headers_refused(fleet):
    for raw, want in BAD:
        # a pipelined good request after the bad one must not be answered
        got = exchange(fleet, raw + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(got) == [want], (raw, got[:400])
        assert b"Connection: close" in got, (raw, got[:400])
    # what stays allowed: HTTP/1.0 and 1.1, chunked bodies, one Content-Length
    ok = [b"GET /healthz HTTP/1.0\r\n\r\n",
          b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
          b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n"
          b"2\r\n{}\r\n0\r\n\r\n",
          b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"]
    for raw in ok:
        got = exchange(fleet, raw)
        assert statuses(got) and statuses(got)[0] not in (400, 501, 505), (raw, got[:400])


def read_slowly(gw, raw):
    """Send a request, wait before reading, then read the response in small
    pieces through a small receive buffer; (status, headers, body)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.settimeout(30)
    s.connect(("127.0.0.1", gw.port))
    try:
        s.sendall(raw)
        time.sleep(0.5)  # the response is produced (and queued) while nothing is read
        data = bytearray()
        while True:
            got = s.recv(16384)
            if not got:
                break
            data += got
    finally:
        s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, body


def test_big_response_arrives_whole_to_a_slow_reader(fleet):
    body = json.dumps({"model": "m1", "prompt": "big", "max_tokens": PIECES}).encode()
    st, hdrs, data = read_slowly(fleet, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert st == 200, data[:300]
    assert int(hdrs[b"content-length"]) == len(data) > 8 << 20
    text = json.loads(data)["choices"][0]["text"]
    assert text == "".join(chr(ord("a") + i) * PIECE for i in range(PIECES))

    st, job = fleet.json("POST", "/v1/jobs", {"model": "m1", "prompt": "big", "max_tokens": PIECES})
    assert st == 202, job
    deadline = time.time() + 30
    while time.time() < deadline:
        st, h, b = fleet.request("GET", f"/v1/jobs/{job['id']}")
        if json.loads(b).get("status") == "done":
            break
        time.sleep(0.05)
    st, hdrs, data = read_slowly(fleet, f"GET /v1/jobs/{job['id']} HTTP/1.1\r\nHost: x\r\n"
                                 "Connection: close\r\n\r\n".encode())
    assert st == 200, data[:300]
    assert int(hdrs[b"content-length"]) == len(data) > 8 << 20
    assert json.loads(data)["text"] == text


def test_log_lines_escaped_and_bounded(fleet):
    marker = "FORGED" + str(os.getpid())
    long_id = "j" * 8000  # a request target holds at most 8 KiB
    st, h, b = fleet.request("GET", f"/v1/jobs/{long_id}")
    assert st == 404
    # a tab and a form feed pass http-parser's request target into the access log
    got = exchange(fleet, f"GET /v1/jobs/x\t\x0c{marker} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert statuses(got) == [404], got
    fleet.request("GET", "/healthz")  # the lines above are written before this one's
    log = fleet.log_text()
    lines = log.split("\n")
    assert any("jjjj" in ln for ln in lines), log[-2000:]
    for ln in lines:
        assert len(ln.encode()) <= LOG_LINE_MAX + 200, ln[:200] + "..."
        assert not re.search(r"[\x00-\x1f\x7f]", ln), repr(ln[:300])
    # the access log bounds the path it names (LOG_FIELD_MAX, common/log.h)
    assert any("/v1/jobs/" + "j" * (256 - 9) + "... → 404" in ln for ln in lines), log[-3000:]
    assert "j" * 257 not in log
    assert "/v1/jobs/x\\x09\\x0c" + marker + " " in log, log[-2000:]
