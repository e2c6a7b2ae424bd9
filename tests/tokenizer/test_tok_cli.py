"""`llmq tokenize` / `llmq detokenize` against Hugging Face `tokenizers`.

Runs the real binary on folders that hold only tokenizer files: the two
production tokenizers in ../shared/tokenizers (46 HF-made cases each, plus the
whole fixture corpus encoded live by the `tokenizers` library) and the trained
fixture tokenizers in tests/fixtures/tokenizers.
"""
import json
import pathlib
import subprocess

import pytest

from llmqtest import FIXTURES

CORPUS = json.loads((FIXTURES / "tokenizers" / "corpus.json").read_text(encoding="utf-8"))


def llmq(build_dir, *args, stdin=None):
    exe = build_dir / "llmq"
    if not exe.exists():
        pytest.fail(f"{exe} is not built: run make")
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, timeout=120)


def batch(build_dir, model, texts, special):
    args = ["tokenize", "--model", str(model), "--batch"] + ([] if special else ["--no-special"])
    stdin = "".join(json.dumps(t) + "\n" for t in texts).encode()
    r = llmq(build_dir, *args, stdin=stdin)
    assert r.returncode == 0, r.stderr.decode()
    out = [json.loads(line) for line in r.stdout.decode().split("\n") if line]
    assert len(out) == len(texts)
    return out


def read_cases(folder):
    inp = (folder / "cases.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = (folder / "cases.out").read_text(encoding="utf-8").split("\n")[: len(inp)]
    return inp, [[int(x) for x in line.split()] for line in out]


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2"])
def test_shared_cases(build_dir, shared_dir, name):
    folder = shared_dir / "tokenizers" / name
    texts, want = read_cases(folder)
    assert len(texts) == 46
    got = batch(build_dir, folder, texts, special=False)
    bad = [(t, w, g["ids"]) for t, w, g in zip(texts, want, got) if g["ids"] != w]
    assert not bad, bad[:3]


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2"])
def test_shared_corpus_vs_hf(build_dir, shared_dir, name):
    """The whole corpus, with and without special tokens, ids and token strings
    compared with the `tokenizers` library running on the same tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = shared_dir / "tokenizers" / name
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    for special in (False, True):
        got = batch(build_dir, folder, CORPUS, special)
        for text, g in zip(CORPUS, got):
            e = hf.encode(text, add_special_tokens=special)
            if name == "llama-spm" and special:
                assert g["ids"][:1] == [1]  # tokenizer_config add_bos_token, as transformers
            assert g["ids"] == e.ids, (text, special)
            assert g["tokens"] == e.tokens, text


def test_tokenize_json_and_plain(build_dir, shared_dir):
    folder = shared_dir / "tokenizers" / "gpt-2"
    r = llmq(build_dir, "tokenize", "--model", str(folder), "--text", "Hello world<|endoftext|>", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j == {"ids": [15496, 995, 50256], "tokens": ["Hello", "Ġworld", "<|endoftext|>"]}
    r = llmq(build_dir, "tokenize", "--model", str(folder), "--text", "Hi\tthere")
    lines = r.stdout.decode().splitlines()
    assert lines[0].split("\t")[0] == "17250" and lines[0].split("\t")[1] == "Hi"
    assert lines[1] == "197\tĉ"


def test_detokenize(build_dir, shared_dir):
    folder = shared_dir / "tokenizers" / "llama-spm"
    r = llmq(build_dir, "detokenize", "--model", str(folder), "--ids", "1,15043,3186,2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"text": "<s> Hello world</s>"}
    r = llmq(build_dir, "detokenize", "--model", str(folder), "--ids", "1,15043,3186,2", "--skip-special")
    assert r.stdout.decode() == "Hello world\n"


@pytest.mark.parametrize("name", ["bl-llama3", "spm-bf", "misc-meta", "bl-roberta", "falcon-like", "ws-suffix"])
def test_fixture_tokenizers(build_dir, name):
    exp = json.loads((FIXTURES / "tokenizers" / f"{name}.expect.json").read_text(encoding="utf-8"))
    got = batch(build_dir, FIXTURES / "tokenizers" / name, CORPUS, special=True)
    for c, g in zip(exp["cases"], got):
        assert g["ids"] == c.get("ids_special", c["ids"])


def test_errors(build_dir, tmp_path):
    r = llmq(build_dir, "tokenize", "--model", str(tmp_path), "--text", "x")
    assert r.returncode == 1
    assert b"tokenizer.json" in r.stderr
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    r = llmq(build_dir, "tokenize", "--model", str(tmp_path), "--text", "x")
    assert r.returncode == 1
    assert b"WordPiece" in r.stderr and b"tokenizer.json" in r.stderr
    assert llmq(build_dir, "tokenize", "--text", "x").returncode == 2
    assert llmq(build_dir, "detokenize", "--model", str(tmp_path), "--ids", "1,x").returncode == 2
