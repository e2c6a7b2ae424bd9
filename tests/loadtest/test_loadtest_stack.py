"""llmq-loadtest against the real local stack: a throwaway redis-server, a
real llmq-worker serving stories260K, and the real llmq-gateway.  Every
request must be accounted for (by the load generator AND by the job hashes
in Redis), TTFT <= E2E for each, and each got exactly the tokens it asked
for (max_tokens with ignore_eos).  The gateway is also reached the way a
real deployment is: HTTPS (stunnel in front of it, with a certificate from a
CA made here), the chat endpoint, and prompts from a ShareGPT file."""
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))
import lthelp  # noqa: E402

MODEL = "stories"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url, proc, log, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200: {log.read_text()[-2000:]}")


class Proc:
    def __init__(self, args, log):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen([str(a) for a in args], stdout=self.f, stderr=subprocess.STDOUT)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.f.close()


@pytest.fixture
def stack(redis_server, shared_dir, tmp_path):
    """redis + worker (+ gateway when built): yields {redis, gateway_url or None}."""
    procs = []
    mport = free_port()
    w = Proc([lthelp.BUILD / "llmq-worker", "--model", shared_dir / "models" / "stories260K", "--model-name", MODEL,
              "--redis", redis_server.url, "--metrics-port", mport, "--max-num-seqs", 16, "--chat-template", "chatml"],
             tmp_path / "worker.log")
    procs.append(w)
    gw_url = None
    try:
        wait_http_ok(f"http://127.0.0.1:{mport}/readyz", w.p, w.log)
        if (lthelp.BUILD / "llmq-gateway").exists():
            gport = free_port()
            g = Proc([lthelp.BUILD / "llmq-gateway", "--redis", redis_server.url, "--listen", f"127.0.0.1:{gport}",
                      "--models", MODEL], tmp_path / "gateway.log")
            procs.append(g)
            gw_url = f"http://127.0.0.1:{gport}"
            wait_http_ok(gw_url + "/readyz", g.p, g.log)
        yield {"redis": redis_server, "gateway": gw_url, "tmp": tmp_path, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()
        for p in procs:  # a clean exit: under ASan this is also the leak check
            assert p.p.returncode == 0, p.log.read_text()[-3000:]


def check_accounted(j, r):
    """The record is complete and consistent, and Redis agrees with it."""
    reqs = j["requests"]
    assert j["issued"] == len(reqs) > 0
    assert j["completed"] + j["failed"] == j["issued"]
    assert j["failed"] == 0, j["errors"]
    for q in reqs:
        assert q["ok"] and q["error"] is None
        assert 0 <= q["ttft_ms"] <= q["e2e_ms"], q
        assert q["output_tokens"] == q["max_tokens"] == q["usage_completion_tokens"], q
        assert 1 <= q["chunks"] <= q["max_tokens"]
    assert j["token_mismatches"] == 0
    assert j["total_output_tokens"] == sum(q["max_tokens"] for q in reqs)
    # every job the run submitted is in Redis, done, with the tokens asked for
    jobs = [k for k in r.scan_iter("llmq:job:{*}") if not k.endswith(b":out")]
    assert len(jobs) == j["issued"]
    states = collections.Counter()
    got = collections.Counter()
    for k in jobs:
        h = {a.decode(): b.decode() for a, b in r.hgetall(k).items()}
        states[h["state"]] += 1
        got[int(h["completion_tokens"])] += 1
    assert states == {"done": j["issued"]}
    assert got == collections.Counter(q["max_tokens"] for q in reqs)


def test_ten_seconds_through_the_gateway(stack, tmp_path):
    if not stack["gateway"]:
        pytest.skip("llmq-gateway is not built: only the Redis target was exercised")
    svg = tmp_path / "run.svg"
    res = lthelp.run(tmp_path, "--target", stack["gateway"], "--model", MODEL, "--concurrency", 8, "--duration", 10,
                     "--prompt-tokens", "uniform:8-64", "--output-tokens", "uniform:8-64", "--stream", "--seed", 3,
                     "--timeout", 60, "--svg", svg, "--quiet", timeout=180)
    assert res.rc == 0, res
    j = res.j
    assert j["config"]["duration_s"] == 10 and max(q["start_s"] for q in j["requests"]) < 10
    assert j["duration_s"] >= 10
    assert j["max_inflight"] == 8
    check_accounted(j, redis.Redis.from_url(stack["redis"].url))
    assert svg.stat().st_size > 1000
    https_chat_sharegpt(stack, tmp_path)


def https_chat_sharegpt(stack, tmp_path):
    """The same gateway behind TLS (stunnel, verified with --cacert), on
    /v1/chat/completions, with ShareGPT prompts and a warm-up: the chat body
    is accepted, every request gets its tokens, input tokens are the
    gateway's usage (the templated prompt)."""
    url = stack["gateway"]
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    cacert = []
    if stunnel:
        pki = lthelp.make_pki(tmp_path)
        port = free_port()
        conf = tmp_path / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\n[gw]\naccept = 127.0.0.1:{port}\n"
                        f"connect = {url.split('//')[1]}\ncert = {pki['cert']}\nkey = {pki['key']}\n")
        stack["procs"].append(Proc([stunnel, conf], tmp_path / "stunnel.log"))
        url, cacert = f"https://127.0.0.1:{port}", ["--cacert", pki["ca"]]
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([{"id": str(i), "conversations": [{"from": "human", "value": v},
                                                                  {"from": "gpt", "value": "..."}]}
                                for i, v in enumerate(["Once upon a time", "The cat sat", "A little girl"])]))
    res = lthelp.run(tmp_path, "--target", url, *cacert, "--model", MODEL, "--endpoint", "/v1/chat/completions",
                     "--dataset-name", "sharegpt", "--dataset-path", data, "--output-tokens", 12, "--concurrency", 3,
                     "--num-prompts", 6, "--num-warmups", 1, "--stream", "--timeout", 60, "--quiet", timeout=120)
    assert res.rc == 0, res
    j = res.j
    assert (j["completed"], j["failed"]) == (6, 0), j["error_examples"]
    assert j["config"]["api"] == "chat" and j["config"]["target"].startswith("https://" if stunnel else "http://")
    for q in j["requests"]:
        assert q["output_tokens"] == q["usage_completion_tokens"] == 12 and q["prompt_tokens"] > 3, q
        assert 0 <= q["ttft_ms"] <= q["e2e_ms"]
    assert j["total_input_tokens"] == sum(q["prompt_tokens"] for q in j["requests"])


def test_redis_target_open_loop(stack, tmp_path):
    res = lthelp.run(tmp_path, "--target", stack["redis"].url, "--model", MODEL, "--rate", 8, "--duration", 5,
                     "--prompt-tokens", "uniform:8-64", "--output-tokens", "uniform:8-64", "--seed", 4,
                     "--timeout", 60, "--quiet", timeout=120)
    assert res.rc == 0, res
    j = res.j
    assert j["config"]["kind"] == "redis" and j["config"]["mode"] == "open"
    assert j["target"]["duplicate_chunks"] == 0 and j["target"]["bad_chunks"] == 0
    # over the protocol each chunk's ids are counted: the count is exact
    for q in j["requests"]:
        assert q["chunks"] >= 1
    check_accounted(j, redis.Redis.from_url(stack["redis"].url))
    # a dataset's text prompts over the protocol: the worker tokenizes them and reports the count
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Once upon a time"}\n{"prompt": "The little dog ran to the park"}\n')
    res = lthelp.run(tmp_path, "--target", stack["redis"].url, "--model", MODEL, "--concurrency", 2, "--requests", 4,
                     "--dataset-name", "custom", "--dataset-path", data, "--output-tokens", 6, "--timeout", 60,
                     "--quiet", timeout=120)
    assert res.rc == 0 and res.j["completed"] == 4, res
    assert {q["prompt_tokens"] for q in res.j["requests"]} == {q["prompt_tokens"] for q in res.j["requests"][:2]}
    assert all(q["prompt_tokens"] > 3 and q["output_tokens"] == 6 for q in res.j["requests"])


def test_redis_unreachable(tmp_path):
    res = lthelp.run(tmp_path, "--target", f"redis://127.0.0.1:{free_port()}", "--model", MODEL, "--concurrency", 1,
                     "--requests", 1, "--prompt-tokens", 4, "--output-tokens", 4, "--quiet")
    assert res.rc == 1 and "cannot connect" in res.stderr.lower(), res
