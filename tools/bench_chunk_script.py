#!/usr/bin/env python3
"""bench_chunk_script.py — what each part of the chunk script costs Redis
(issue 25, docs/benchmarks.md "Coordination ceiling").

Every generated token is one job's part of a step's `jobops_chunks` call
(common/jobops.c chunks_lua): HMGET (the fence) + XADD + PUBLISH, inside a
Lua loop.  This starts a fresh redis-server, loads the script exactly as
common/jobops.c holds it and variants with one part taken out, and sends
each the same calls (--jobs running jobs per call, EVALSHA, pipelined),
interleaved (A B C ... A B C ...), reading INFO cpu around each run.  The
difference between the script and a variant is what that part costs per
job (per token without coalescing); `bare` (only the XADD, no fence, no
PUBLISH) is the floor a call per token has while every chunk is its own
stream entry.  Nothing here is a valid protocol: the variants are for
measuring only.

Usage (from the repository root):
  .venv/bin/python tools/bench_chunk_script.py [--jobs 50] [--calls 400] [--reps 3] [--json OUT]
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time

import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
# a chunk as a worker writes it for one token: {seq, text, ids}
CHUNK = b"\x83\xa3seq\xcd\x01\x00\xa4text\xa5 word\xa3ids\x91\xcd\x12\x34"


def chunks_lua():
    """chunks_lua from common/jobops.c, as the C compiler joins it."""
    src = (ROOT / "common" / "jobops.c").read_text()
    m = re.search(r"static const char chunks_lua\[\] =\n(.*?);\n", src, re.S)
    if not m:
        raise SystemExit("chunks_lua not found in common/jobops.c")
    return "".join(json.loads(line.strip()) for line in m.group(1).splitlines())


def variants(base):
    fence = "local h = redis.pcall('HMGET', KEYS[2 * i - 1], 'state', 'attempts')"
    pub = "      redis.call('PUBLISH', ARGV[a - 1], ARGV[a])\n"
    for part in (fence, pub):
        if part not in base:
            raise SystemExit(f"the chunk script changed: {part.strip()!r} not in it; update the variants")
    out = {"script": base}
    out["no_publish"] = base.replace(pub, "")
    out["no_fence"] = base.replace(fence, "local h = {'running', ARGV[a - 2]}")
    out["fence_attempts_only"] = base.replace(
        fence, "local h = {'running', redis.pcall('HGET', KEYS[2 * i - 1], 'attempts')}")
    out["bare"] = out["no_fence"].replace(pub, "")
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50, help="jobs (chunks) per call: a worker's batch")
    ap.add_argument("--calls", type=int, default=400, help="calls per run")
    ap.add_argument("--reps", type=int, default=3, help="runs of each variant, interleaved; the best counts")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--json", help="write the figures as JSON")
    a = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-chunk-script-"))
    port = free_port()
    rs = subprocess.Popen([a.redis_server, "--port", str(port), "--save", "", "--appendonly", "no",
                           "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        vs = variants(chunks_lua())
        shas = {k: r.script_load(v) for k, v in vs.items()}
        keys, args = [], []
        for i in range(a.jobs):
            r.hset(f"job:{{j{i}}}", mapping={"state": "running", "attempts": "1"})
            keys += [f"job:{{j{i}}}", f"job:{{j{i}}}:out"]
            args += ["1", f"out:{{j{i}}}", CHUNK]
        ps = r.pubsub()  # one subscriber on every channel, as the gateway is
        ps.subscribe(*[f"out:{{j{i}}}" for i in range(a.jobs)])

        def cpu():
            i = r.info("cpu")
            return i["used_cpu_sys"] + i["used_cpu_user"]

        res = {k: [] for k in vs}
        for _ in range(a.reps):
            for k in vs:
                r.delete(*[f"job:{{j{i}}}:out" for i in range(a.jobs)])
                p = r.pipeline(transaction=False)
                c0 = cpu()
                for n in range(a.calls):
                    p.evalsha(shas[k], 2 * a.jobs, *keys, *args)
                    if n % 20 == 19:
                        p.execute()
                        while ps.get_message(timeout=0):  # keep the subscriber's buffer drained
                            pass
                p.execute()
                c1 = cpu()
                res[k].append((c1 - c0) / (a.calls * a.jobs) * 1e6)
                while ps.get_message(timeout=0):
                    pass
        best = {k: min(v) for k, v in res.items()}
        print(f"Redis CPU per job (= per token, one chunk each), {a.jobs} jobs per call, best of {a.reps}; "
              f"load {os.getloadavg()[0]:.2f}")
        for k, v in res.items():
            d = best["script"] - best[k]
            print(f"  {k:20s} {best[k]:6.2f} us   (script - this: {d:+.2f})   runs {[round(x, 2) for x in v]}")
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps({"jobs": a.jobs, "calls": a.calls, "us_per_job": res,
                                                        "best": best}, indent=1) + "\n")
    finally:
        rs.terminate()
        rs.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
