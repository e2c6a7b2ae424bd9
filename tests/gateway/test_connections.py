"""Clients that hold the gateway's connections (docs/operations.md, "Limits
on input"): a request must be complete within --request-timeout of its first
byte, however slowly its bytes trickle in.  Waits are bounded loops, never
speed asserts."""
import socket
import time


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
