#!/usr/bin/env python3
"""bench_guide.py — what structured output costs (issue 21's benchmark).

1. Per-step mask time: tools/bench_guide.c (built here against $BUILD's
   libraries) walks a nested JSON schema with llguidance on the GPT-2
   tokenizer (50k) and the Llama 2 tokenizer (32k) of ../shared/tokenizers.
2. Decode tok/s at batch 8 on the 110M shape (random BF16 weights,
   tools/gen_model.py, Llama 2 tokenizer), with and without a constraint:
   redis-server + llmq-worker --max-num-seqs 8 (OMP_NUM_THREADS=1), 8 jobs of
   --tokens new tokens each, submitted at once; rounds alternate plain /
   constrained.  Reported per wall second and per second of the worker's CPU
   time (utime + stime), which a machine busy with other work disturbs less.

    .venv/bin/python tools/bench_guide.py [--walks 20] [--tokens 64] [--rounds 3] [--skip-decode]

Prints a JSON line per measurement and a summary table (markdown).
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("LLMQ_SHARED", ROOT.parent / "shared"))
BUILD = pathlib.Path(os.environ.get("BUILD", ROOT / "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
os.environ["LLMQ_BUILD"] = str(BUILD)  # the worker the decode bench starts (tests/llmqtest.py)
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

# Nested: objects in an array in an object, enums, bounded numbers, required fields.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "rating": {"type": "number", "minimum": 0, "maximum": 10},
        "genre": {"enum": ["drama", "comedy", "horror", "documentary"]},
        "cast": {"type": "array", "maxItems": 4, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0},
                           "lead": {"type": "boolean"}},
            "required": ["name", "lead"], "additionalProperties": False}},
        "studio": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                    "country": {"type": "string", "maxLength": 3}},
                   "required": ["name"], "additionalProperties": False},
    },
    "required": ["title", "year", "genre", "cast", "studio"],
    "additionalProperties": False,
}
# For the decode rate: a constraint that never completes within --tokens.
LONG = {
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 1000, "items": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 12},
                       "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}}},
        "required": ["id", "name", "tags"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}


def llguidance_dir():
    import llguidance
    return os.path.dirname(llguidance.__file__)


def build_mask_bench(out):
    libs = [BUILD / f"libllmq-{n}.a" for n in ("engine", "tokenizer", "common")]
    for lib in libs:
        if not lib.exists():
            sys.exit(f"{lib} is missing: make BUILD={BUILD}")
    subprocess.run(["cc", "-std=c11", "-O2", "-march=native", "-D_GNU_SOURCE", "-I", str(ROOT),
                    str(ROOT / "tools" / "bench_guide.c"), *map(str, libs), "-lpcre2-8", "-lutf8proc", "-lxxhash",
                    "-ldl", "-ljansson", "-lmsgpackc", "-lhiredis", "-lm", "-fopenmp", "-o", str(out)], check=True)


def mask_bench(walks):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = pathlib.Path(tmp) / "bench_guide"
        build_mask_bench(exe)
        schema = pathlib.Path(tmp) / "schema.json"
        schema.write_text(json.dumps(SCHEMA))
        for name in ("gpt-2", "llama-spm"):
            out = subprocess.run([str(exe), str(SHARED / "tokenizers" / name), llguidance_dir(), str(schema),
                                  str(walks)], check=True, capture_output=True, text=True).stdout
            row = json.loads(out)
            row["tokenizer"] = name
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def cpu_s(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def decode_bench(tokens, rounds):
    from llmqtest import RedisServer, free_port
    from worker_util import Worker, chunks, connect, ids_of, job, submit, wait_final
    tok = SHARED / "tokenizers" / "llama-spm"
    model = pathlib.Path(os.environ.get("LLMQ_BENCH_DIR", "/tmp/llmq-bench")) / "110M-bf16-llama-spm"
    if not (model / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_model.py"), "--shape", "110M", "--dtype", "bf16",
                        "--out", str(model), "--tokenizer-from", str(tok)], check=True)
    tmp = pathlib.Path(tempfile.mkdtemp())
    srv = RedisServer(tmp, free_port()).start()
    # one OpenMP thread: the worker's CPU time then measures its work alone
    # (spinning threads of a busy machine would count too), see cpu_s below
    os.environ["OMP_NUM_THREADS"] = "1"
    w = Worker(model, srv.url, "m", tmp / "w.log", "--max-num-seqs", 8, "--llguidance", llguidance_dir())
    r = connect(srv.url)
    results = {"plain": [], "json_schema": []}
    try:
        n = 0
        # one warm-up round (page faults, first allocation of the KV pool)
        for rnd in range(rounds + 1):
            for kind in ("plain", "json_schema"):
                ids = []
                t0, c0 = time.time(), cpu_s(w.proc.pid)
                for k in range(8):
                    jid = f"{kind}{n}"
                    n += 1
                    req = dict(prompt=f"Once upon a time {k}", max_tokens=tokens, ignore_eos=True, temperature=0.8,
                               seed=k)
                    if kind != "plain":
                        req["guide"] = {"type": "json_schema", "data": json.dumps(LONG)}
                    submit(r, jid, model="m", **req)
                    ids.append(jid)
                wait_final(r, ids, timeout=600)
                wall, cpu = time.time() - t0, cpu_s(w.proc.pid) - c0
                got = sum(len(ids_of(chunks(r, j))) for j in ids)
                # decode only: from the last first-token to the last finish (job hash times, ms)
                hs = [job(r, j) for j in ids]
                assert all(h["state"] == "done" for h in hs), hs
                if rnd == 0:
                    continue
                row = {"kind": kind, "round": rnd, "tokens": got, "wall_s": round(wall, 3),
                       "tok_per_s": round(got / wall, 1), "worker_cpu_s": round(cpu, 3),
                       "tok_per_cpu_s": round(got / cpu, 1)}
                print(json.dumps(row), flush=True)
                results[kind].append((got / wall, got / cpu))
    finally:
        w.stop()
        srv.stop()
    return results


def main():
    # SIGTERM ends the run through the finally blocks (the worker and redis-server it started)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ap = argparse.ArgumentParser()
    ap.add_argument("--walks", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-decode", action="store_true")
    a = ap.parse_args()
    rows = mask_bench(a.walks)
    print("\n| tokenizer | vocab | steps | mask p50 | mask p99 | mask mean | sampler's masking | consume | "
          "matcher create | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        print(f"| {x['tokenizer']} | {x['vocab']} | {x['steps']} | {x['mask_us_p50']:.0f} us | "
              f"{x['mask_us_p99']:.0f} us | {x['mask_us_mean']:.0f} us | {x['apply_us_mean']:.0f} us | "
              f"{x['consume_us_mean']:.0f} us | {x['create_ms']:.2f} ms | {x['load_ms']:.0f} ms |")
    if a.skip_decode:
        return
    res = decode_bench(a.tokens, a.rounds)
    print(f"\n| batch 8, 110M BF16, 1 thread (mean of {a.rounds}) | plain | json_schema | cost |\n|---|---:|---:|---:|")
    for i, what in ((1, "tokens per worker CPU second"), (0, "tokens per wall second")):
        p, c = (sum(x[i] for x in res[k]) / len(res[k]) for k in ("plain", "json_schema"))
        print(f"| {what} | {p:.1f} | {c:.1f} | {100 * (1 - c / p):.1f}% |")


if __name__ == "__main__":
    main()
