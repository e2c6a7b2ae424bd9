#!/usr/bin/env python3
"""Prefix affinity across worker groups, measured (issue 20, "Benchmark:
Fleet"): two llmq-worker groups behind one llmq-gateway on one
redis-server, C conversations of T turns each, interleaved (turn t of every
conversation at once, then turn t + 1), each turn the whole history so far
(a shared system prompt, then the user and assistant messages) through
/v1/chat/completions, streamed.  Reports TTFT p50/p99 (request sent to
first content byte) and prompt tokens computed (prompt_tokens -
cached_tokens of every turn's usage) with affinity (the workers' default)
and without (--no-affinity: the plain shared stream).  Each run starts
its own Redis, workers and gateway (cold caches); runs alternate, affinity
first, for --rounds rounds, and each mode's best run (lowest p50) is shown
with the ratios.

    tools/bench_affinity.py --model /tmp/llmq-bench/110M-4l [--conversations 8 --turns 6 --rounds 1]

The model needs a tokenizer (tools/gen_model.py --tokenizer-from).
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered {path} on port {port}")


def turn(port, model, messages, max_tokens):
    """One streamed chat turn: (ttft s, reply text, usage)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=0, ignore_eos=True,
                stream=True, stream_options={"include_usage": True})
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(r.read().decode())
    ttft, text, usage = None, [], None
    for raw in r:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        for ch in ev.get("choices") or []:
            if ttft is None:
                ttft = time.monotonic() - t0
            text.append(ch.get("delta", {}).get("content") or "")
        if ev.get("usage"):
            usage = ev["usage"]
    c.close()
    return ttft, "".join(text), usage


def run(a, affinity):
    tmp = tempfile.mkdtemp(prefix="bench-affinity-")
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), LLMQ_ALLOW_ROOT="1")
    try:
        rport = free_port()
        procs.append(subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1",
                                       "--save", "", "--dir", tmp], stdout=subprocess.DEVNULL))
        url = f"redis://127.0.0.1:{rport}/0"
        time.sleep(0.3)
        mports = []
        for g in ("g1", "g2"):
            mport = free_port()
            mports.append(mport)
            extra = [] if affinity else ["--no-affinity"]
            procs.append(subprocess.Popen([a.worker, "--model", a.model, "--model-name", "m", "--redis", url,
                                           "--consumer", g, "--max-num-seqs", str(a.max_num_seqs),
                                           "--metrics-port", str(mport), *extra],
                                          stdout=open(os.path.join(tmp, g + ".log"), "w"), stderr=subprocess.STDOUT,
                                          env=env))
        gport = free_port()
        procs.append(subprocess.Popen([a.gateway, "--redis", url, "--listen", f"127.0.0.1:{gport}", "--models", "m"],
                                      stdout=open(os.path.join(tmp, "gw.log"), "w"), stderr=subprocess.STDOUT, env=env))
        for p in mports:
            wait_http(p, "/readyz")
        wait_http(gport, "/readyz")
        rng = random.Random(a.seed)
        words = "the a cat dog sun park ran saw big little happy tree ball girl boy went home said".split()
        say = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
        system = {"role": "system", "content": say(a.system_words)}
        convs = [[system] for _ in range(a.conversations)]
        ttfts, computed, prompt = [], 0, 0
        t0 = time.monotonic()
        for t in range(a.turns):
            for c in convs:
                c.append({"role": "user", "content": say(a.user_words)})
            out = [None] * len(convs)

            def one(i):
                out[i] = turn(gport, "m", convs[i], a.max_tokens)
            th = [threading.Thread(target=one, args=(i,)) for i in range(len(convs))]
            for x in th:
                x.start()
            for x in th:
                x.join()
            for c, (ttft, text, usage) in zip(convs, out):
                ttfts.append(ttft)
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                computed += usage["prompt_tokens"] - cached
                prompt += usage["prompt_tokens"]
                c.append({"role": "assistant", "content": text})
        wall = time.monotonic() - t0
        ttfts.sort()
        return dict(p50=statistics.median(ttfts) * 1000, p99=ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000,
                    computed=computed, prompt=prompt, wall=wall)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--worker", default="build/llmq-worker")
    ap.add_argument("--gateway", default="build/llmq-gateway")
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--system-words", type=int, default=100)
    ap.add_argument("--user-words", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each worker")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    best = {}
    for rnd in range(a.rounds):
        for name, aff in (("affinity", True), ("no affinity", False)):
            r = run(a, aff)
            print(f"round {rnd + 1} {name:12s} TTFT p50 {r['p50']:8.1f} ms  p99 {r['p99']:8.1f} ms  prompt tokens "
                  f"{r['prompt']:6d}, computed {r['computed']:6d}  wall {r['wall']:6.2f} s", flush=True)
            if name not in best or r["p50"] < best[name]["p50"]:
                best[name] = r
    a_, b_ = best["affinity"], best["no affinity"]
    print(f"best of {a.rounds}: TTFT p50 {b_['p50'] / a_['p50']:.2f}x lower, p99 {b_['p99'] / a_['p99']:.2f}x lower, "
          f"prompt tokens computed {b_['computed'] / max(1, a_['computed']):.2f}x fewer with affinity")
    print(f"load after: {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
