"""llmq-loadtest against what a real deployment looks like: HTTPS with a
certificate from a CA made here (openssl), the chat endpoint, prompts from
ShareGPT and custom dataset files, vLLM's flags and flat result keys, a
warm-up, and the progress line.  The server is the scripted fake
(fake_sse.py), wrapped in Python's ssl module where TLS is tested."""
import json
import os
import ssl
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fake_sse import prompt_tokens  # noqa: E402
import lthelp  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    d = lthelp.make_pki(tmp_path_factory.mktemp("pki"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d["cert"], d["key"])
    return {"ctx": ctx, **d}


def args(url, *extra):
    return ["--target", url, "--model", "m", "--quiet", *extra]


def test_https_verified_with_cacert(fake, pki, tmp_path):
    """HTTPS through curl: verified against --cacert, keep-alive included;
    a CA that did not sign the certificate fails every request as 'tls',
    --insecure accepts it."""
    s = fake(ttft_ms=10, itl_ms=[3], ssl=pki["ctx"])
    assert s.url.startswith("https://")
    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 2, "--requests", 6, "--prompt-tokens", 4,
                                     "--output-tokens", 5, "--stream", "--cacert", pki["ca"]))
    assert res.rc == 0, res
    j = res.j
    assert (j["completed"], j["failed"]) == (6, 0), j["errors"]
    assert all(r["chunks"] == 5 and r["ttft_ms"] >= 9 for r in j["requests"])
    assert len(s.bodies) == 6 and s.connections == 2  # 2 TLS connections carried the 6 requests
    assert j["target"]["connections_opened"] == 2 and j["target"]["connections_reused"] == 4
    assert j["config"]["tls_verify"] is True

    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 1, "--requests", 2, "--prompt-tokens", 4,
                                     "--output-tokens", 2, "--stream", "--cacert", pki["other"]))
    assert res.rc == 0, res
    assert res.j["errors"] == {"tls": 2}, res.j["error_examples"]
    assert "certificate" in res.j["error_examples"]["tls"].lower()

    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 1, "--requests", 2, "--prompt-tokens", 4,
                                     "--output-tokens", 2, "--stream", "--insecure"))
    assert res.rc == 0 and res.j["completed"] == 2, res
    assert res.j["config"]["tls_verify"] is False


@pytest.mark.parametrize("stream", [True, False])
def test_chat_endpoint_sends_messages(fake, tmp_path, stream):
    """--endpoint /v1/chat/completions sends a chat body (messages,
    max_completion_tokens), and its answers (delta / message content) count."""
    s = fake(ttft_ms=5, itl_ms=[2])
    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 2, "--requests", 4, "--prompt-tokens", 6,
                                     "--output-tokens", 3, "--endpoint", "/v1/chat/completions",
                                     *(["--stream"] if stream else [])))
    assert res.rc == 0, res
    j = res.j
    assert j["completed"] == 4 and j["config"]["api"] == "chat"
    for b in s.bodies:
        body = b["body"]
        assert "prompt" not in body and body["max_completion_tokens"] == 3 and body["ignore_eos"] is True
        (msg,) = body["messages"]
        assert msg["role"] == "user" and len(msg["content"].split()) == 6  # one word per drawn id
        assert body.get("stream") is (True if stream else None)
    for r in j["requests"]:
        assert r["output_tokens"] == 3 and r["chunks"] == (3 if stream else 1) and r["prompt_tokens"] == 6


def test_sharegpt_dataset_through_chat_with_vllm_flags(fake, tmp_path):
    """ShareGPT's layout (one JSON array): the first human turn of each
    conversation is the prompt, in a seeded order, every prompt used; input
    tokens are the server's usage; vLLM's flag spellings work."""
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"question {i} " + "w " * i},
                                               {"from": "gpt", "value": "an answer"}]} for i in range(5)]
    convs.append({"id": "no-human", "conversations": [{"from": "gpt", "value": "skipped"}]})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs))
    prompts = {c["conversations"][0]["value"] for c in convs[:5]}
    sent = []
    for _ in range(2):
        s = fake(ttft_ms=2, itl_ms=[1])
        res = lthelp.run(tmp_path, "--base-url", s.url, "--model", "m", "--quiet", "--concurrency", 1,
                         "--num-prompts", 10, "--dataset-name", "sharegpt", "--dataset-path", path,
                         "--output-tokens", 2, "--endpoint", "/v1/chat/completions", "--stream", "--seed", 5)
        assert res.rc == 0, res
        sent.append([b["body"]["messages"][0]["content"] for b in s.bodies])
        assert set(sent[-1]) == prompts and len(sent[-1]) == 10  # 5 prompts, each sent twice
        j = res.j
        assert j["config"]["dataset_name"] == "sharegpt" and j["config"]["dataset_prompts"] == 5
        assert j["total_input_tokens"] == sum(prompt_tokens(b["body"]) for b in s.bodies)
        assert [r["prompt_tokens"] for r in j["requests"]] == [prompt_tokens(b["body"]) for b in s.bodies]
        assert "sharegpt dataset" in res.stdout
    assert sent[0] == sent[1]  # the same seed, the same order
    assert sent[0] != sorted(sent[0], key=lambda p: int(p.split()[1]))  # a shuffle, not the file's order


def test_custom_jsonl_dataset_on_completions(fake, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "tell me a story"}\n\n{"prompt": "what is two and two"}\n')
    s = fake(ttft_ms=2, itl_ms=[1])
    res = lthelp.run(tmp_path, *args(s.url, "--request-rate", "inf", "--requests", 4, "--dataset-name", "custom",
                                     "--dataset-path", path, "--output-tokens", 2, "--stream"))
    assert res.rc == 0, res
    assert sorted(b["body"]["prompt"] for b in s.bodies) == ["tell me a story"] * 2 + ["what is two and two"] * 2
    assert res.j["total_input_tokens"] == 4 + 4 + 5 + 5


def percentile(xs, p):
    """numpy's default (linear) percentile, written out."""
    xs = sorted(xs)
    pos = p / 100 * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] if lo + 1 >= len(xs) else xs[lo] + (xs[lo + 1] - xs[lo]) * (pos - lo)


def test_flat_vllm_keys_p95_and_warmup(fake, tmp_path):
    """--percentile-metrics / --metric-percentiles give vLLM's flat keys
    (p99.9_ttft_ms: Python's str() of the number), computed from the
    per-request figures; p95 is in every nested figure; --num-warmups
    requests go first and count nowhere."""
    s = fake(ttft_ms=lambda i: 5 + (i * 7) % 23, itl_ms=[2, 5])
    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 3, "--requests", 9, "--prompt-tokens", 3,
                                     "--output-tokens", "uniform:2-6", "--stream", "--num-warmups", 3,
                                     "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles",
                                     "50,90,99.9"))
    assert res.rc == 0, res
    j = res.j
    # 3 warm-ups, then the 9 measured requests: the server saw 12, the record holds 9
    assert len(s.bodies) == 12 and j["issued"] == j["num_prompts"] == 9 and len(j["requests"]) == 9
    assert j["config"]["num_warmups"] == 3 and "warm-up" in res.stdout
    warm_end = max(b["t_events"][-1] for b in s.bodies[:3])
    assert all(b["t_recv"] >= warm_end for b in s.bodies[3:])  # the measured run began after the warm-up
    reqs = j["requests"]
    for name, key in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("e2el", "e2e_ms")):
        vals = [r[key] for r in reqs]
        assert j[f"mean_{name}_ms"] == pytest.approx(sum(vals) / len(vals), rel=1e-9)
        assert j[f"median_{name}_ms"] == pytest.approx(percentile(vals, 50), rel=1e-9)
        assert j[f"p90_{name}_ms"] == pytest.approx(percentile(vals, 90), rel=1e-9)
        assert j[f"p99.9_{name}_ms"] == pytest.approx(percentile(vals, 99.9), rel=1e-9)
        assert j[key]["p95"] == pytest.approx(percentile(vals, 95), rel=1e-9)
    assert j["median_itl_ms"] == j["itl_ms"]["p50"] and j["p90_itl_ms"] == j["itl_ms"]["p90"]
    assert j["itl_ms"]["p90"] <= j["p99.9_itl_ms"] <= j["itl_ms"]["max"]
    assert j["duration"] == j["duration_s"] and j["max_concurrency"] == 3 and j["request_rate"] == "inf"
    assert "p95" in res.stdout
    # vLLM's defaults without the flags: ttft, tpot, itl at p99
    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 1, "--requests", 2, "--prompt-tokens", 3,
                                     "--output-tokens", 3, "--stream"))
    keys = {k for k in res.j if k.startswith(("p", "mean_", "median_", "std_")) and k.endswith("_ms")}
    assert keys == {f"{a}_{m}_ms" for a in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl")}


def test_failed_warmup_stops_the_run(fake, tmp_path):
    s = fake(ttft_ms=2, itl_ms=[1], fail=lambda i, body: (503, "not ready") if i == 1 else None)
    res = lthelp.run(tmp_path, *args(s.url, "--concurrency", 2, "--requests", 5, "--prompt-tokens", 3,
                                     "--output-tokens", 2, "--stream", "--num-warmups", 2))
    assert res.rc == 1 and "warm-up failed" in res.stdout and "not ready" in res.stdout, res
    assert len(s.bodies) == 2 and res.j["issued"] == 0


@pytest.mark.parametrize("extra,msg", [
    (["--dataset-name", "sharegpt"], "needs --dataset-path"),
    (["--dataset-name", "custom", "--dataset-path", "/nonexistent.jsonl"], "No such file"),
    (["--percentile-metrics", "ttft,bogus"], "--percentile-metrics"),
    (["--metric-percentiles", "0"], "--metric-percentiles"),
])
def test_usage_errors_of_the_new_flags(tmp_path, extra, msg):
    res = lthelp.run(tmp_path, "--target", "https://127.0.0.1:9", "--model", "m", "--concurrency", 1, "--requests", 1,
                     "--output-tokens", 4, *(["--prompt-tokens", 4] if "--dataset-name" not in extra else []), *extra,
                     json_out=False)
    assert res.rc == 2 and msg in res.stderr, res
