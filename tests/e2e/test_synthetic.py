"""The synthetic engine (worker/engine/synth.h, issue 25): a real llmq-worker
with --backend synthetic serves through a real llmq-gateway and a real
redis-server.  The tokens it emits are checked against the rule synth.h
states, computed here independently (the prefix hash in Python, the ids that
are text of their own from tokenizer.json with the `tokenizers` package);
the step's sleep is checked as a lower bound on the wall clock (which load
cannot make flaky), and a job whose worker is killed with -9 resumes on
another one with exactly the ids the rule gives."""
import json
import re
import time
import urllib.request

import openai
import pytest

import worker_util as wu
from llmqtest import SHARED, RedisServer, free_port

RATE = 50.0  # tokens/s per sequence: a step of 20 ms
MASK = (1 << 64) - 1


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def piece_bytes(piece):
    """A sentencepiece-style piece's bytes: <0xNN> is that byte, '▁' a space."""
    m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()


def whole_text_ids(model_dir, vocab, eos):
    """synth.h's ids: not EOS, not special, bytes alone non-empty valid UTF-8 without control characters."""
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    pieces = {i: p for p, i in tj["model"]["vocab"].items()}
    out = []
    for i in range(vocab):
        if i in eos or i in special or i not in pieces:
            continue
        b = piece_bytes(pieces[i])
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if s and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in s):
            out.append(i)
    return out, pieces


def expected(prompt, n, ids):
    """The n ids synth.h says follow prompt."""
    seq, h = [], 0
    for t in prompt:
        h = mix(((h ^ (t << 32 | len(seq))) + 0x9E3779B97F4A7C15) & MASK)
        seq.append(t)
    out = []
    for _ in range(n):
        t = ids[h % len(ids)]
        out.append(t)
        h = mix(((h ^ (t << 32 | len(seq))) + 0x9E3779B97F4A7C15) & MASK)
        seq.append(t)
    return out


def ready(w, port, timeout=30):
    """Wait for the worker's /readyz (fail at once when it exits: an option it refuses)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert w.proc.poll() is None, f"the worker exited {w.proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the worker never became ready")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if SHARED is None:
        pytest.skip("../shared (models) is not available")
    tmp = tmp_path_factory.mktemp("synthetic")
    model_dir = SHARED / "models" / "stories260K"
    cfg = json.loads((model_dir / "config.json").read_text())
    ids, pieces = whole_text_ids(model_dir, cfg["vocab_size"], {cfg["eos_token_id"]})
    rs = RedisServer(tmp, free_port()).start()
    procs = []
    try:
        mport = free_port()
        w = wu.Worker(model_dir, rs.url, "sim", tmp / "worker-a.log", "--backend", "synthetic",
                      "--synthetic-rate", RATE, "--max-num-seqs", 8, "--metrics-port", mport)
        procs.append(w)
        ready(w, mport)
        gw = wu.Gateway(rs.url, tmp / "gateway.log", "--models", "sim")
        procs.append(gw)
        yield {"redis": wu.connect(rs.url), "url": rs.url, "gw": gw, "worker": w, "model_dir": model_dir,
               "ids": ids, "pieces": pieces, "tmp": tmp, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()
        rs.stop()


def test_completion_through_the_gateway_is_the_hash_rule_at_the_rate(fleet):
    """Whatever the sampling parameters, the ids are the rule's, the text is their
    pieces, and 24 tokens take at least 24 steps of 1/RATE s."""
    prompt = [1] + list(range(300, 316))
    want = expected(prompt, 24, fleet["ids"])
    c = openai.OpenAI(base_url=fleet["gw"].base + "/v1", api_key="unused", max_retries=0, timeout=60)
    t0 = time.monotonic()
    texts = []
    jid = None
    for ev in c.completions.create(model="sim", prompt=prompt, max_tokens=24, temperature=1.3, top_p=0.9,
                                   seed=7, stream=True):
        jid = ev.id
        texts.append(ev.choices[0].text)
    elapsed = time.monotonic() - t0
    cs = wu.chunks(fleet["redis"], jid.removeprefix("cmpl-"))
    wu.assert_clean_stream(cs)
    assert wu.ids_of(cs) == want
    assert "".join(texts) == b"".join(fleet_piece(fleet, t) for t in want).decode()
    assert elapsed >= 24 / RATE  # 24 steps asleep: a floor no load can lower
    assert elapsed < 24 / RATE * 10, elapsed  # loose: the rate is roughly the one asked


def fleet_piece(fleet, t):
    return piece_bytes(fleet["pieces"][t])


def test_resume_after_kill9_gives_the_same_tokens(fleet):
    """A job whose worker dies mid-answer resumes on another worker: its chunks,
    seq by seq, are exactly the ids the rule gives (no repeat, no gap)."""
    r = fleet["redis"]
    prompt = [1, 400, 401, 402, 403]
    wu.submit(r, "synth-resume", model="sim", prompt_ids=prompt, max_tokens=60)
    deadline = time.time() + 30
    while len(r.xrange("llmq:job:{synth-resume}:out")) < 8:
        assert time.time() < deadline, wu.job(r, "synth-resume")
        time.sleep(0.02)
    fleet["worker"].kill()  # SIGKILL: no drain, its entry stays pending
    b = wu.Worker(fleet["model_dir"], fleet["url"], "sim", fleet["tmp"] / "worker-b.log", "--backend", "synthetic",
                  "--synthetic-rate", RATE, "--claim-idle-ms", 100)
    fleet["procs"].append(b)
    wu.wait_final(r, ["synth-resume"], timeout=60)
    assert wu.job(r, "synth-resume")["state"] == "done"
    cs = wu.chunks(r, "synth-resume")
    wu.assert_clean_stream(cs)
    assert wu.ids_of(cs) == expected(prompt, 60, fleet["ids"])


def test_options_that_do_not_fit_are_refused(fleet, tmp_path):
    """--synthetic-rate without the synthetic backend, a bad rate, or --tp: exit 2 with a reason."""
    import subprocess
    from llmqtest import BUILD
    base = [str(BUILD / "llmq-worker"), "--model", str(fleet["model_dir"]), "--model-name", "sim",
            "--redis", fleet["url"]]
    for extra, says in ((["--synthetic-rate", "10"], "goes with --backend synthetic"),
                        (["--backend", "synthetic", "--synthetic-rate", "0"], "synthetic rate"),
                        (["--backend", "synthetic", "--tp", "2"], "one rank")):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and says in p.stderr, (extra, p.returncode, p.stderr)


def test_llmq_generate_emits_the_same_ids(fleet):
    """`llmq generate --backend synthetic:R` (no worker, no Redis) follows the same rule, so an
    answer does not depend on who computes it; several prompts in one batch, preempting each
    other in a pool of 6 blocks, each get their own ids."""
    import subprocess
    from llmqtest import BUILD
    prompts = [[1, 300, 301, 302], [1] + list(range(320, 340)), [1, 5, 6]]
    args = [str(BUILD / "llmq"), "generate", "--model", str(fleet["model_dir"]), "--backend", "synthetic:1000",
            "--max-tokens", 40, "--kv-blocks", 6, "--json"]
    for p in prompts:
        args += ["--prompt-ids", ",".join(map(str, p))]
    out = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [g["output_ids"] for g in got] == [expected(p, 40, fleet["ids"]) for p in prompts]
    assert sum(g["preemptions"] for g in got) > 0  # the recompute path ran
