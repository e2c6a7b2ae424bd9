#!/usr/bin/env python3
"""bench_tokenizer.py — encode MB/s: llmq's C tokenizer vs Hugging Face `tokenizers`.

Both run single-threaded on this machine over the same text: the tokenizer test
corpus (tests/fixtures/tokenizers/corpus.json: prose, code, numbers, white space,
accents, CJK, emoji) followed by English prose and code from the Python standard
library, about 2 MB, cut into chunks of about 4 KB at line ends (prompt-sized
documents).  Each side encodes every chunk without special tokens; the best of
REPEATS runs after a warm-up run counts (both keep a BPE word cache).  The ids are
compared too: a benchmark of a tokenizer that disagrees would be meaningless.

    .venv/bin/python tools/bench_tokenizer.py [--repeats 3] [--mb 2] [--chunk 4096]

Tokenizers: gpt-2 and llama-spm from ../shared/tokenizers (when present) and the
bl-llama3 fixture (Llama 3 split regex).  Prints a Markdown table.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("LLMQ_SHARED", ROOT.parent / "shared"))
CFLAGS = ["-std=c11", "-O2", "-march=native", "-D_GNU_SOURCE", "-pthread", "-I", str(ROOT)]
LIBS = ["-lpcre2-8", "-lutf8proc", "-ljansson", "-lxxhash", "-lm"]


def build(out):
    tok = ROOT / "worker" / "tokenizer"
    srcs = ([ROOT / "tools" / "bench_tokenizer.c", tok / "tokenizer.c", ROOT / "common" / "status.c",
             ROOT / "common" / "utf8.c"] + sorted(tok.glob("tok_*.c")))
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, *CFLAGS, *map(str, srcs), "-o", str(out), *LIBS], check=True)


def chunks(mb, size):
    corpus = json.loads((ROOT / "tests/fixtures/tokenizers/corpus.json").read_text(encoding="utf-8"))
    lines = [s.replace("\x00", " ") for s in corpus]
    total = sum(len(s.encode()) for s in lines)
    for p in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines.extend(text.splitlines())
        total += len(text.encode())
        if total > mb * 1e6:
            break
    out, cur, cur_len = [], [], 0
    for line in lines:
        cur.append(line)
        cur_len += len(line.encode()) + 1
        if cur_len >= size:
            out.append("\n".join(cur))
            cur, cur_len = [], 0
    if cur:
        out.append("\n".join(cur))
    return out


def bench_hf(folder, texts, repeats):
    from tokenizers import Tokenizer
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    load = time.perf_counter() - t0
    best, ids = 1e30, None
    for r in range(repeats + 1):
        s = time.perf_counter()
        enc = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        e = time.perf_counter() - s
        if r > 0:
            best = min(best, e)
        ids = enc
    return best, load, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mb", type=float, default=2.0)
    ap.add_argument("--chunk", type=int, default=4096)
    args = ap.parse_args()
    import tokenizers

    texts = chunks(args.mb, args.chunk)
    nbytes = sum(len(t.encode()) for t in texts)
    models = []
    for name in ("gpt-2", "llama-spm"):
        if (SHARED / "tokenizers" / name / "tokenizer.json").is_file():
            models.append((name, SHARED / "tokenizers" / name))
        else:
            print(f"{SHARED}/tokenizers/{name} absent: skipped", file=sys.stderr)
    models.append(("bl-llama3 (fixture)", ROOT / "tests/fixtures/tokenizers/bl-llama3"))
    with tempfile.TemporaryDirectory() as tmp:
        exe = pathlib.Path(tmp) / "bench_tokenizer"
        build(exe)
        data = pathlib.Path(tmp) / "chunks.bin"
        data.write_bytes(b"".join(t.encode() + b"\0" for t in texts))
        rows = []
        for name, folder in models:
            r = subprocess.run([str(exe), str(folder), str(data), str(args.repeats)], capture_output=True,
                               text=True, check=True)
            c = json.loads(r.stdout)
            hf_s, hf_load, hf_ids = bench_hf(folder, texts, args.repeats)
            hf_tokens, h = sum(len(i) for i in hf_ids), 0
            for ids in hf_ids:
                for i in ids:
                    h = (h * 31 + i) % (1 << 64)
            if hf_tokens != c["tokens"] or h != c["checksum"]:
                sys.exit(f"{name}: ids differ from HF (llmq {c['tokens']} tokens, HF {hf_tokens})")
            rows.append((name, c["tokens"], c["mb_per_s"], nbytes / hf_s / 1e6, c["load_seconds"], hf_load))
    print(f"text: {nbytes / 1e6:.2f} MB in {len(texts)} chunks of ~{args.chunk} B; best of {args.repeats} "
          f"after a warm-up; single thread; tokenizers {tokenizers.__version__}; "
          f"{os.cpu_count()} CPUs ({platform_cpu()})\n")
    print("| tokenizer | tokens | llmq MB/s | HF tokenizers MB/s | llmq / HF | load llmq / HF (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, c, h, cl, hl in rows:
        print(f"| {name} | {n} | {c:.2f} | {h:.2f} | {c / h:.2f}x | {cl:.3f} / {hl:.3f} |")


def platform_cpu():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
