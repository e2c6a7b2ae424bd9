"""Paths and helpers shared by llmq's Python test suites (import llmqtest).

Paths come from the environment tests/run.sh sets (LLMQ_ROOT, LLMQ_BUILD,
LLMQ_SHARED); running pytest by hand from the repo root works too.
RedisServer runs a throwaway real redis-server on a free port in a
temporary directory.  (A module of its own, not conftest.py: several
conftest.py files exist, and `from conftest import` would pick any one.)
"""
import os
import pathlib
import shutil
import socket
import subprocess
import time


ROOT = pathlib.Path(os.environ.get("LLMQ_ROOT", pathlib.Path(__file__).resolve().parent.parent))
BUILD = pathlib.Path(os.environ.get("LLMQ_BUILD", ROOT / "build"))
_shared = os.environ.get("LLMQ_SHARED") or str(ROOT.parent / "shared")
SHARED = pathlib.Path(_shared) if pathlib.Path(_shared).is_dir() else None
FIXTURES = ROOT / "tests" / "fixtures"

# llmq-gateway refuses to run as root unless allowed (docs/operations.md,
# Security).  Test machines often are root: allow it for every process the
# suites start (tests/security/test_root.py checks the refusal itself).
os.environ.setdefault("LLMQ_ALLOW_ROOT", "1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, tmpdir, port, extra=()):
        self.port = port
        self.dir = tmpdir
        self.url = f"redis://127.0.0.1:{port}"
        self.extra = list(extra)
        self.proc = None

    def start(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run 'make deps'")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--daemonize", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
