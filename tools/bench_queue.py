#!/usr/bin/env python3
"""Queue overhead of the fleet (issue: the fleet on one machine).

1. The same 64 requests (short story prompts, greedy, 48 new tokens each)
   run in-process (`llmq generate`, one continuous batch) and through
   gateway + Redis + worker (64 concurrent streaming /v1/completions): the
   ratio of total times and the added TTFT p50.
2. Job submissions per second through POST /v1/jobs (wrk, 32 connections)
   beside the raw XADD rate of the same redis-server (redis-benchmark).

    .venv/bin/python tools/bench_queue.py [--model DIR] [--build build] [--repeat N]

With --repeat N both sides of 1. run N times, alternating, and the best
total time and the best TTFT p50 of each side are reported: on a machine
shared with other work, the best of several runs is what the code costs,
the rest is what the neighbours cost.

The model needs a tokenizer.json (tools/gen_model.py --tokenizer-from
../shared/models/stories260K gives a random-weight model stories' tokenizer).
"""
import argparse
import http.client
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def stream(port, body, out, i):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    ttft = None
    text = []
    for raw in r:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            if ttft is None:
                ttft = time.perf_counter() - t0
            text.append(json.loads(line[6:])["choices"][0]["text"])
        elif line == "data: [DONE]":
            break
    out[i] = (ttft, time.perf_counter() - t0, "".join(text))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    ap.add_argument("--build", default=os.environ.get("BUILD", str(ROOT / "build")))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    build = pathlib.Path(a.build)
    model = pathlib.Path(a.model)
    words = ["Once upon a time", "The little dog", "Lily and Tom went", "One day, a bird", "The sun was warm",
             "A big red ball", "Tim had a toy car", "In the park there was"]
    prompts = [words[i % len(words)] for i in range(a.n)]

    # 1a. in process
    cmd = [str(build / "llmq"), "generate", "--model", str(model), "--json", "--temperature", "0",
           "--max-tokens", str(a.max_tokens), "--max-num-seqs", "64", "--max-batched-tokens", "512"]
    for p in prompts:
        cmd += ["--prompt", p]

    def in_process():
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        t = time.perf_counter() - t0
        local = [json.loads(l) for l in res.stdout.splitlines()]
        return t, statistics.median(o["prefill_ms"] for o in local) / 1e3, local

    tmp = tempfile.mkdtemp()
    rport, hport = free_port(), free_port()
    procs = [subprocess.Popen(["redis-server", "--port", str(rport), "--dir", tmp, "--save", ""],
                              stdout=subprocess.DEVNULL)]
    try:
        wait_port(rport)
        url = f"redis://127.0.0.1:{rport}"
        procs.append(subprocess.Popen([str(build / "llmq-worker"), "--model", str(model), "--model-name", "m",
                                       "--redis", url, "--max-num-seqs", "64", "--max-batched-tokens", "512"],
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([str(build / "llmq-gateway"), "--redis", url, "--listen",
                                       f"127.0.0.1:{hport}"], stderr=subprocess.DEVNULL,
                                      env={**os.environ, "LLMQ_ALLOW_ROOT": "1"}))  # local bench: root is fine
        wait_port(hport)
        time.sleep(0.5)
        # 1b. through the fleet

        def fleet():
            out = [None] * a.n
            ts = [threading.Thread(target=stream, args=(hport, dict(model="m", prompt=p, max_tokens=a.max_tokens,
                                                                   temperature=0), out, i))
                  for i, p in enumerate(prompts)]
            t0 = time.perf_counter()
            [t.start() for t in ts]
            [t.join() for t in ts]
            return time.perf_counter() - t0, statistics.median(o[0] for o in out), out

        runs_local, runs_fleet = [], []
        for _ in range(a.repeat):
            runs_local.append(in_process())
            runs_fleet.append(fleet())
        t_local, ttft_local = min(r[0] for r in runs_local), min(r[1] for r in runs_local)
        t_fleet, ttft_fleet = min(r[0] for r in runs_fleet), min(r[1] for r in runs_fleet)
        local = runs_local[0][2]
        same = min(sum(o[2] == l.get("text") for o, l in zip(r[2], local)) for r in runs_fleet)
        # 2. submissions per second
        lua = pathlib.Path(tmp) / "post.lua"
        lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                       'wrk.body = \'{"model":"bench","prompt":"hi","max_tokens":1}\'\n')
        w = subprocess.run(["wrk", "-t2", "-c32", "-d3s", "-s", str(lua), f"http://127.0.0.1:{hport}/v1/jobs"],
                           capture_output=True, text=True, check=True).stdout
        jobs_s = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w)
        rb = subprocess.run(["redis-benchmark", "-p", str(rport), "-n", "200000", "-c", "32", "-q",
                             "XADD", "benchstream", "*", "id", "x", "p", "payload"],
                            capture_output=True, text=True, check=True).stdout
        xadd_s = float(re.findall(r"([\d.]+) requests per second", rb)[-1])
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)
    print(f"queue overhead, {a.n} requests x {a.max_tokens} tokens, model {model.name}, {os.cpu_count()} cores"
          + (f", best of {a.repeat} runs" if a.repeat > 1 else ""))
    print("| measure | in-process (llmq generate) | gateway + Redis + worker | ratio / delta |")
    print("|---|---|---|---|")
    print(f"| total time | {t_local:.2f} s | {t_fleet:.2f} s | {t_fleet / t_local:.2f}x |")
    print(f"| TTFT p50 | {ttft_local * 1e3:.1f} ms | {ttft_fleet * 1e3:.1f} ms | +{(ttft_fleet - ttft_local) * 1e3:.1f} ms |")
    print(f"| identical outputs | | {same}/{a.n} | |")
    print(f"| submissions/s | XADD (redis-benchmark) {xadd_s:.0f}/s | POST /v1/jobs (wrk) {jobs_s:.0f}/s"
          f"{' (' + non2xx.group(1) + ' non-2xx)' if non2xx else ''} | {jobs_s / xadd_s * 100:.0f}% |")
    return 0 if same == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
