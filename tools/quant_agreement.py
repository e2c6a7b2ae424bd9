#!/usr/bin/env python3
"""Top-1 agreement of a quantized model with the unquantized one, through
`llmq generate` only: greedy continuations of the unquantized model, then, for
every prefix (prompt + the first i generated tokens), whether the quantized
model's greedy next token is the same (teacher forcing: one divergence does
not spoil the rest).

    tools/quant_agreement.py --model /tmp/m110 [--llmq build/llmq] [--tokens 32]

Prompts: 8 fixed id sequences (the vocabulary of any llmq test model covers
them).  Prints one line per quantization.
"""
import argparse
import json
import subprocess

PROMPTS = [[1, 13, 42, 7], [1, 300, 25, 99, 180], [1, 5, 6, 7, 8, 9], [1, 250, 251],
           [1, 77, 400, 13, 2, 90, 66], [1, 123], [1, 31, 41, 59, 26, 53], [1, 200, 100, 50]]


def generate(llmq, model, prompts, tokens, quant):
    cmd = [llmq, "generate", "--model", model, "--json", "--temperature", "0", "--ignore-eos",
           "--max-tokens", str(tokens), "--quantization", quant]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["output_ids"] for line in out.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--llmq", default="build/llmq")
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    ref = generate(a.llmq, a.model, PROMPTS, a.tokens, "none")
    for quant in ("int8", "int4"):
        agree = total = same_seq = 0
        for p, out in zip(PROMPTS, ref):
            prefixes = [p + out[:i] for i in range(len(out))]
            nxt = generate(a.llmq, a.model, prefixes, 1, quant)
            agree += sum(n[0] == o for n, o in zip(nxt, out))
            total += len(out)
        free = generate(a.llmq, a.model, PROMPTS, a.tokens, quant)
        same_seq = sum(f == r for f, r in zip(free, ref))
        print(f"{quant}: top-1 agreement {agree}/{total} ({100 * agree / total:.1f}%); "
              f"free-running greedy identical for {same_seq}/{len(ref)} prompts")


if __name__ == "__main__":
    main()
