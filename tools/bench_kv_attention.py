#!/usr/bin/env python3
"""CPU time per token of `llmq generate` with each KV cache type, against a
baseline binary: decode = (CPU of 65 generated tokens - CPU of 1) / 64 after
a prompt of N ids, prefill = (CPU of that prompt's 1 token - CPU of a 1-token
prompt) / N.  CPU time (rusage), not wall clock, so that other processes on
a shared machine move the figures less; configurations interleaved, the
minimum of ROUNDS kept.  docs/benchmarks.md "KV cache type and tiled
attention" has figures and how the baseline was built.

    tools/bench_kv_attention.py --model DIR --base OLD/llmq [--llmq build/llmq]
        [--tokens 2000] [--rounds 3] [--threads 1] [--base-kv f32] [--kv f32,bf16,f16]

--base-kv f32,bf16 runs the baseline with each of those cache types too (a
baseline that has --kv-dtype); each row's ratio is against the baseline
with the same cache type, or its first one.
"""
import argparse
import os
import subprocess
import time


def cpu_seconds(binary, model, kv, prompt, toks, env):
    p = subprocess.Popen([binary, "generate", "--model", model, "--prompt-ids", prompt, "--max-tokens", str(toks),
                          "--temperature", "0", "--ignore-eos", "--kv-dtype", kv, "--max-batched-tokens", "512"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    if status:
        raise SystemExit(f"{binary} --kv-dtype {kv}: {p.stderr.read().decode()[-2000:]}")
    return ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--base", required=True, help="the baseline llmq (run with an F32 cache)")
    ap.add_argument("--llmq", default="build/llmq")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--base-kv", default="f32", help="cache types for the baseline, comma-separated")
    ap.add_argument("--kv", default="f32,bf16,f16", help="cache types for --llmq, comma-separated")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=a.threads, OMP_WAIT_POLICY="passive")
    base_kv = a.base_kv.split(",")
    new_kv = a.kv.split(",")
    # interleaved: each baseline cache type right before the same type on --llmq
    configs = [(f"base {kv}", a.base, kv) for kv in base_kv if kv not in new_kv]
    for kv in new_kv:
        configs += ([(f"base {kv}", a.base, kv)] if kv in base_kv else []) + [(kv, a.llmq, kv)]
    n = a.tokens
    ids = ",".join(str(3 + (i * 7919) % 31000) for i in range(n))
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    t0, best = time.time(), {}
    for _ in range(a.rounds):
        for name, binary, kv in configs:
            load = cpu_seconds(binary, a.model, kv, "1", 1, env)
            one = cpu_seconds(binary, a.model, kv, ids, 1, env)
            many = cpu_seconds(binary, a.model, kv, ids, 65, env)
            d = best.setdefault(name, [float("inf"), float("inf")])
            d[0] = min(d[0], (many - one) / 64 * 1000)
            d[1] = min(d[1], (one - load) / n * 1000)
    print(f"{time.time() - t0:.0f} s, {a.threads} thread(s), min of {a.rounds} interleaved rounds, CPU ms per token")
    for name, (dec, pf) in best.items():
        kv = name.split()[-1]
        b = best[f"base {kv}" if kv in base_kv else f"base {base_kv[0]}"]
        print(f"{name:9} decode at {n}: {dec:.2f} ms ({b[0] / dec:.2f}x)   prefill {n}: {pf:.3f} ms ({b[1] / pf:.2f}x)")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
