"""Helpers of the security suites: a small fleet (real redis-server, real
llmq-worker on a generated tiny model, real llmq-gateway) whose processes
get exactly the environment a test gives them, with their logs kept for
inspection.  Built on tests/llmqtest.py and tests/gateway/gwtest.py."""
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "gateway"))
from llmqtest import BUILD, ROOT, free_port  # noqa: E402
from gwtest import sse_events  # noqa: E402

PYTHON = os.environ.get("PYTHON", str(ROOT / ".venv" / "bin" / "python"))
MODEL_NAME = "tiny"


def make_tiny_model(out):
    """A tiny random-weight Llama with a trained tokenizer (tools/gen_model.py)."""
    subprocess.run([PYTHON, str(ROOT / "tools" / "gen_model.py"), "--shape", "tiny", "--out", str(out),
                    "--train-tokenizer"], check=True, capture_output=True)
    return out


def clean_env(**extra):
    """os.environ without any llmq credential variable, plus extra (None removes)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMQ_API_KEYS", "LLMQ_API_KEY_FILE", "LLMQ_REDIS_PASSWORD", "LLMQ_REDIS_PASSWORD_FILE")}
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


class Proc:
    """A binary of the build with its own env; stdout+stderr to a log file."""

    def __init__(self, name, args, env, log_path, **popen):
        self.name = name
        self.log_path = pathlib.Path(log_path)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(BUILD / name), *map(str, args)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, **popen)

    def text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle, timeout=15, start=0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.text()[start:]:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: '{needle}' never logged:\n{self.text()}")

    def term(self, timeout=30):
        """SIGTERM; the process must exit 0 with a clean (sanitizer-free) log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.text()}")
        self.log.close()
        text = self.log_path.read_text(errors="replace")
        assert "AddressSanitizer" not in text and "runtime error" not in text, text
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}:\n{text}"
        return text

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()


class Gateway(Proc):
    def __init__(self, redis_url, args, env, log_path, wait="healthz"):
        self.port = free_port()
        super().__init__("llmq-gateway", ["--redis", redis_url, "--listen", f"127.0.0.1:{self.port}", *args],
                         env, log_path)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.text()}")
            try:
                if self.request("GET", "/" + wait)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not up (/{wait}):\n{self.text()}")

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers (lowercase names), body bytes)"""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None):
        st, _, b = self.request(method, path, body, headers)
        return st, json.loads(b) if b else None

    def sse(self, path, body, headers=None, timeout=120):
        """POST with stream: true; the parsed data events up to [DONE]."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("POST", path, body=json.dumps(dict(body, stream=True)),
                  headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        assert r.status == 200, r.read()
        out = []
        for ev in sse_events(r):
            if ev.get("data") == "[DONE]":
                break
            out.append(json.loads(ev["data"]))
        c.close()
        return out


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def start_worker(model_dir, redis_url, args, env, log_path):
    w = Proc("llmq-worker", ["--model", model_dir, "--model-name", MODEL_NAME, "--redis", redis_url,
                             "--chat-template", "llama-2", *args], env, log_path)
    w.wait_log("serving " + MODEL_NAME, timeout=30)
    return w


def complete(gw, prompt, headers=None, max_tokens=24):
    """A greedy completion through the gateway; returns its text."""
    st, body = gw.json("POST", "/v1/completions",
                       {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                        "ignore_eos": True}, headers)
    assert st == 200, body
    return body["choices"][0]["text"]
