"""Clients that hold the gateway's connections (docs/operations.md, "Limits
on input" and "Connections"): at the descriptor limit the gateway rests
instead of spinning on its listener, connections past --max-connections are
answered 503 and closed while the others keep working, and a request must be
complete within --request-timeout of its first byte, however slowly its
bytes trickle in.

CPU time is read from /proc/PID/stat and compared with a generous bound
(a third of the wall time a spinning loop would burn in full); waits are
bounded loops, never speed asserts."""
import os
import resource
import socket
import time

import pytest

LIMIT = 64      # RLIMIT_NOFILE given to the gateway (soft and hard)
HOLD = 100      # connections opened against it: more than it has descriptors


def fd_limit(soft, hard):
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def get(sock, path="/healthz", keep_alive=True):
    """Send a GET on a raw socket and return the first response's bytes
    (b"" when the gateway closed or reset the connection instead)."""
    conn = "keep-alive" if keep_alive else "close"
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\n\r\n".encode())
    except OSError:
        return b""
    return read_response(sock)


def read_response(sock):
    """The bytes of one response with a Content-Length (b"" on close or reset)."""
    out = b""
    while True:
        try:
            got = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return out
        if not got:
            return out
        out += got
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            n = [int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")]
            if n and len(body) >= n[0]:
                return out


def served(gw, timeout=10):
    """True once a fresh connection gets 200 from /healthz (within timeout s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=2) as s:
                if get(s, keep_alive=False).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("cap", [None, "0"], ids=["default-cap", "no-cap"])
def test_descriptor_limit_neither_spins_nor_floods_the_log(start_gateway, cap):
    """At RLIMIT_NOFILE the gateway used to call accept() in a loop (EMFILE,
    the listener stays readable): a core at 100 % and millions of identical
    log lines, no client served.  Now: the default cap keeps it below the
    limit (extra connections get 503), and without a cap (--max-connections
    0) it rests on EMFILE; either way it stays idle, logs little, and serves
    again once connections close."""
    args = ["--max-connections", cap] if cap is not None else []
    gw = start_gateway(*args, preexec_fn=fd_limit(LIMIT, LIMIT))
    held = []
    try:
        for _ in range(HOLD):
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        time.sleep(0.5)  # let it accept what it can
        log0 = gw.log_path.stat().st_size
        cpu0, t0 = cpu_seconds(gw.proc.pid), time.time()
        time.sleep(2.0)
        cpu, wall = cpu_seconds(gw.proc.pid) - cpu0, time.time() - t0
        grown = gw.log_path.stat().st_size - log0
        assert cpu < wall / 3, f"{cpu:.2f} s of CPU in {wall:.2f} s while out of descriptors"
        assert grown < 4096, f"the log grew by {grown} bytes in {wall:.1f} s"
        # the first connections were accepted and still work
        for s in held[:5]:
            assert get(s).startswith(b"HTTP/1.1 200"), "an accepted connection stopped working"
        if cap is None:
            # the default cap is the limit less a reserve: the last ones were refused with a 503
            # (or a reset, if the close raced the client's bytes)
            late = held[-1]
            late.settimeout(5)
            resp = get(late)
            assert resp == b"" or resp.startswith(b"HTTP/1.1 503"), resp[:200]
            if resp:
                assert b'"too_many_connections"' in resp, resp
        else:
            # without a cap the last ones wait in the backlog and are served once descriptors free up
            late = held.pop()
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        for s in held:
            s.close()
    if cap is not None:
        late.settimeout(10)
        out = b""
        while True:
            got = late.recv(65536)
            if not got:
                break
            out += got
        late.close()
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert served(gw), "no request served after the connections closed: " + gw.log_text()[-2000:]
    text = gw.log_text()
    assert len(text) < 64 * 1024, f"log of {len(text)} bytes"
    warnings = [line for line in text.splitlines() if "http: accept" in line or "http: refusing" in line]
    assert 1 <= len(warnings) <= 3, warnings  # said once, not once per attempt


def test_max_connections_refuses_the_extra_ones(start_gateway):
    gw = start_gateway("--max-connections", "4")
    held = []
    try:
        for _ in range(4):
            # a slot may still be taken for a moment by the start-up probe's connection
            deadline = time.time() + 10
            while True:
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                if get(s).startswith(b"HTTP/1.1 200"):
                    held.append(s)
                    break
                s.close()
                assert time.time() < deadline, "4 connections never served with --max-connections 4"
                time.sleep(0.1)
        # one more: answered 503 (or closed) at once, not left hanging
        extra = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        resp = get(extra, keep_alive=False)
        extra.close()
        assert resp == b"" or resp.startswith(b"HTTP/1.1 503"), resp[:200]
        if resp:
            assert b"Retry-After: 1" in resp and b'"too_many_connections"' in resp, resp
        # the four keep working
        for s in held:
            assert get(s).startswith(b"HTTP/1.1 200")
        # one closes: a slot is free again
        held.pop().close()
        assert served(gw)
    finally:
        for s in held:
            s.close()
    assert "refusing connections past --max-connections 4" in gw.log_text()


def test_soft_descriptor_limit_raised_at_start(start_gateway):
    gw = start_gateway(preexec_fn=fd_limit(LIMIT, 4096))
    with open(f"/proc/{gw.proc.pid}/limits") as f:
        line = [x for x in f if x.startswith("Max open files")][0]
    assert line.split()[3:5] == ["4096", "4096"], line
    assert "at most 4032 connections" in gw.log_text()


def test_slow_request_is_cut_at_the_deadline(start_gateway):
    """Slowloris: a header byte every 0.3 s used to restart the request
    timer each time, so the connection was held forever.  The deadline now
    counts from the request's first byte."""
    gw = start_gateway("--request-timeout", "2")
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=0.3)
    t0 = time.time()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    out, closed = b"", False
    while time.time() - t0 < 15 and not closed:
        try:
            s.sendall(b"a")
        except OSError:
            closed = True
            break
        try:
            got = s.recv(65536)
            if not got:
                closed = True
            out += got
        except socket.timeout:
            pass
        except OSError:
            closed = True
    elapsed = time.time() - t0
    s.close()
    assert closed or out, f"still held after {elapsed:.1f} s"
    assert elapsed < 8, f"cut only after {elapsed:.1f} s with --request-timeout 2"
    if out:
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        assert b"request not received in time" in out


def test_slow_but_timely_request_and_idle_keep_alive(start_gateway):
    """Within the deadline a slow request is served, and the keep-alive idle
    time between requests is not the request deadline."""
    gw = start_gateway("--request-timeout", "2")
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":  # 36 bytes in about 1 s
            s.sendall(bytes([b]))
            time.sleep(0.03)
        assert read_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(3)  # idle longer than the request deadline
        assert get(s).startswith(b"HTTP/1.1 200"), "an idle keep-alive connection was closed"
    finally:
        s.close()
