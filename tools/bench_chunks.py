#!/usr/bin/env python3
"""Redis's cost of a delivered token with the real CPU backend (issue 25,
docs/benchmarks.md "Chunks on Redis").

A fresh redis-server, one llmq-gateway and one llmq-worker on a real model
(default ../shared/models/stories260K, --max-num-seqs 32, which generates
fast enough to load Redis); llmq-loadtest keeps --streams streaming
completions of --output-tokens tokens in flight through the gateway.
Reported per point, over the measured run (a warm-up excluded):

  tokens/s delivered, Redis CPU per token (INFO cpu used_cpu_sys + user
  deltas / tokens), the chunk scripts' time per token (INFO commandstats:
  EVAL usec / tokens, the admissions and finals included), chunk writes
  (XADD) per token, and ITL p50 / p99 as the clients see it (llmq-loadtest:
  the gap between two SSE events, whatever tokens an event carries).

--busy-ms B: a client keeps Redis inside a Lua busy-wait for B ms of every
B + 2 ms (another tenant's load), so Redis answers late: what coalescing
(--worker-arg=--chunk-interval-ms=N) is for.  Its own time is in INFO cpu
(so Redis CPU per token is then not comparable) but not in EVAL's usec
(it runs as EVALSHA).

    LLMQ_ALLOW_ROOT=1 .venv/bin/python tools/bench_chunks.py --build build \\
        [--worker-arg=--chunk-interval-ms=20] [--busy-ms 10] [--json out.json]
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent

BUSY_LUA = """local t0 = redis.call('TIME')
local s = t0[1] * 1000000 + t0[2]
repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - s >= tonumber(ARGV[1])
return 1"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what}: port {port} never opened")


def cpu(r):
    i = r.info("cpu")
    return i["used_cpu_sys"] + i["used_cpu_user"]


def main():
    shared = ROOT.parent / "shared"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=pathlib.Path, default=ROOT / "build")
    ap.add_argument("--model-dir", type=pathlib.Path, default=shared / "models" / "stories260K")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=200)
    ap.add_argument("--busy-ms", type=float, default=0)
    ap.add_argument("--worker-arg", action="append", default=[])
    ap.add_argument("--json")
    a = ap.parse_args()
    build = a.build if a.build.is_absolute() else ROOT / a.build
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_chunks."))
    rport, gport = free_port(), free_port()
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        rs = subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        procs.append(rs)
        wait_port(rport, rs, "redis-server")
        url = f"redis://127.0.0.1:{rport}"
        w = subprocess.Popen([str(build / "llmq-worker"), "--model", str(a.model_dir), "--model-name", "stories",
                              "--redis", url, "--max-num-seqs", str(a.max_num_seqs), *a.worker_arg],
                             stdout=open(tmp / "worker.log", "w"), stderr=subprocess.STDOUT, env=env)
        procs.append(w)
        g = subprocess.Popen([str(build / "llmq-gateway"), "--redis", url, "--listen", f"127.0.0.1:{gport}",
                              "--models", "stories"], stdout=open(tmp / "gw.log", "w"), stderr=subprocess.STDOUT)
        procs.append(g)
        wait_port(gport, g, "llmq-gateway")
        lt = [str(build / "llmq-loadtest"), "--target", f"http://127.0.0.1:{gport}", "--model", "stories",
              "--concurrency", str(a.streams), "--prompt-tokens", "16", "--output-tokens", str(a.output_tokens),
              "--stream", "--quiet"]
        subprocess.run(lt + ["--requests", str(a.streams)], stdout=subprocess.DEVNULL, check=True)  # warm-up
        r = redis.Redis.from_url(url)
        stop = threading.Event()

        def busy():
            script = redis.Redis.from_url(url).register_script(BUSY_LUA)
            while not stop.is_set():
                script(args=[int(a.busy_ms * 1000)])
                time.sleep(0.002)

        bt = threading.Thread(target=busy, daemon=True) if a.busy_ms > 0 else None
        r.config_resetstat()
        c0, t0 = cpu(r), time.time()
        if bt:
            bt.start()
        out = tmp / "lt.json"
        subprocess.run(lt + ["--requests", str(a.requests), "--json", str(out)], stdout=subprocess.DEVNULL, check=True)
        c1, t1 = cpu(r), time.time()
        stop.set()
        if bt:
            bt.join(10)
        cs = r.info("commandstats")
        rep = json.loads(out.read_text())
        tokens = rep.get("total_output_tokens") or sum(q.get("output_tokens", 0) for q in rep["requests"])
        itl = rep["itl_ms"]
        res = {
            "machine": f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
            "worker_args": a.worker_arg, "busy_ms": a.busy_ms, "streams": a.streams, "tokens": tokens,
            "tok_s": round(tokens / (t1 - t0), 1),
            "redis_us_per_token": round((c1 - c0) * 1e6 / tokens, 2),
            "eval_us_per_token": round(cs.get("cmdstat_eval", {}).get("usec", 0) / tokens, 2),
            "evals_per_token": round(cs.get("cmdstat_eval", {}).get("calls", 0) / tokens, 3),
            "xadds_per_token": round(cs.get("cmdstat_xadd", {}).get("calls", 0) / tokens, 3),
            "itl_p50_ms": itl.get("p50"), "itl_p99_ms": itl.get("p99"),
        }
        print(" ".join(f"{k} {v}" for k, v in res.items()))
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
