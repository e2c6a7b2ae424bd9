"""Helpers of the gateway suites: the real llmq-gateway binary (from
$LLMQ_BUILD) as a process, an HTTP helper built on the standard library's
http.client, and an SSE reader.

Every gateway started here is stopped with SIGTERM and must exit 0 with a
clean log: under SANITIZER=address that makes every test a leak and
memory-error check of the gateway as well.
"""
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

ROOT = pathlib.Path(os.environ.get("LLMQ_ROOT", pathlib.Path(__file__).resolve().parents[2]))
BUILD = pathlib.Path(os.environ.get("LLMQ_BUILD", ROOT / "build"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, redis_url, args, tmp_path, preexec_fn=None):
        """preexec_fn: run in the child before exec (e.g. to lower its RLIMIT_NOFILE)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = BUILD / "llmq-gateway"
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: run make first")
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("LLMQ_LOG", "info")
        self.proc = subprocess.Popen(
            [str(exe), "--redis", redis_url, "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_text()}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start: " + self.log_text())

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.request("GET", "/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError("gateway never became ready: " + self.log_text())

    def connect(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers dict (lowercase names), body bytes)"""
        c = self.connect(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None):
        st, h, b = self.request(method, path, body, headers)
        return st, json.loads(b) if b else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("gateway ignored SIGTERM: " + self.log_text())
        self.log.close()
        text = self.log_path.read_text(errors="replace")
        assert "AddressSanitizer" not in text and "runtime error" not in text, text
        assert self.proc.returncode == 0, f"gateway exited {self.proc.returncode}: {text}"


def sse_events(resp):
    """Yield the events of an SSE response as dicts {id, event, data}; comments are skipped."""
    ev = {}
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line == "":
            if ev:
                yield ev
            ev = {}
            continue
        if line.startswith(":"):
            continue
        k, _, v = line.partition(":")
        v = v[1:] if v.startswith(" ") else v
        if k == "data":
            ev["data"] = ev["data"] + "\n" + v if "data" in ev else v
        else:
            ev[k] = v
