#!/usr/bin/env python3
"""Prefix caching, measured: `llmq generate` on a shared-prefix workload
(R requests = one shared system prompt of P tokens + a distinct question of
Q tokens, all submitted at once) with the cache on and off, then a 0%-hit
workload (R distinct prompts of P + Q tokens) on and off for the cache's
own cost.  Prints prompt tokens computed, TTFT p50/p99 (llmq generate's
prefill_ms: submission to first token), wall and CPU time (the CPU time is
the steadier figure on a shared machine; run with OMP_NUM_THREADS=1 there),
best of --repeat runs interleaved, and checks that the output ids are the
same on and off.

    tools/bench_prefix.py --model /tmp/llmq-bench/110M-f32 [--requests 16 --prefix 768 --question 64]
"""
import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time


def run(llmq, model, prompts, extra):
    cmd = [llmq, "generate", "--model", model, "--json", "--temperature", "0", *map(str, extra)]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    t0, u0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)  # steadier than wall on a shared machine
    return [json.loads(line) for line in r.stdout.splitlines()], (time.monotonic() - t0, cpu)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(name, outs, t):
    ttft = [o["prefill_ms"] for o in outs]
    computed = sum(o["prompt_tokens"] - o["cached_tokens"] for o in outs)
    print(f"{name:26s} prompt tokens computed {computed:6d}  TTFT p50 {statistics.median(ttft):8.1f} ms"
          f"  p99 {pct(ttft, 0.99):8.1f} ms  wall {t[0]:6.2f} s  cpu {t[1]:6.2f} s")
    return statistics.median(ttft), computed, t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--llmq", default="build/llmq")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prefix", type=int, default=768)
    ap.add_argument("--question", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(1)
    tok = lambda n: [rng.randrange(3, a.vocab) for _ in range(n)]  # noqa: E731
    system = tok(a.prefix)
    shared = [system + tok(a.question) for _ in range(a.requests)]
    distinct = [tok(a.prefix + a.question) for _ in range(a.requests)]
    extra = ["--max-tokens", a.max_tokens]
    print(f"== {a.requests} requests: {a.prefix}-token shared prefix + {a.question}-token questions, "
          f"{a.max_tokens} new tokens each ({a.model}; best of {a.repeat}, runs interleaved)")

    def pair(prompts):
        """a.repeat runs on and off, interleaved; the best TTFT p50 and the least cpu of each."""
        ons, offs = [], []
        for _ in range(a.repeat):
            ons.append(run(a.llmq, a.model, prompts, extra))
            offs.append(run(a.llmq, a.model, prompts, extra + ["--no-prefix-caching"]))
        key = lambda r: statistics.median(o["prefill_ms"] for o in r[0])  # noqa: E731
        on, off = min(ons, key=key), min(offs, key=key)
        assert [o["output_ids"] for o in on[0]] == [o["output_ids"] for o in off[0]], "outputs differ on and off"
        cpu = (min(r[1][1] for r in ons), min(r[1][1] for r in offs))
        return on, off, cpu

    on, off, cpu = pair(shared)
    t_on, c_on, _ = report("shared prefix, cache on", *on)
    t_off, c_off, _ = report("shared prefix, cache off", *off)
    print(f"prompt tokens computed off/on {c_off / c_on:.2f}x, TTFT p50 off/on {t_off / t_on:.2f}x, "
          f"cpu off/on {cpu[1] / cpu[0]:.2f}x (best cpu {cpu[0]:.2f} / {cpu[1]:.2f} s)")
    on0, off0, cpu0 = pair(distinct)
    t0_on, _, _ = report("0% hits, cache on", *on0)
    t0_off, _, _ = report("0% hits, cache off", *off0)
    print(f"0% hits: on/off TTFT p50 {t0_on / t0_off:.3f}, cpu {cpu0[0] / cpu0[1]:.3f} "
          f"(best cpu {cpu0[0]:.2f} / {cpu0[1]:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
