"""Past one Redis (issue 25): one llmq-gateway in front of two real
redis-servers, `--redis A --redis-for beta=B`, with a synthetic llmq-worker
of model alpha on A and one of model beta on B (workers are unchanged: each
points at its model's Redis).  Checked from the outside: each model's jobs
are written to its own instance (read back with redis-cli on each, and the
other instance holds none of them), the job API finds a job's instance from
its id, /v1/models is the union of both instances' heartbeats, and losing B
fails beta's requests with a 503 that names B while alpha keeps serving;
B back, beta serves again.  llmq-loadtest runs against the pair too."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

import worker_util as wu
from llmqtest import SHARED, RedisServer, free_port
from test_synthetic import expected, ready, whole_text_ids

RATE = 400.0  # tokens/s per sequence: fast, the tokens are checked, not the timing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "loadtest"))


def http(method, url, body=None, timeout=30):
    """(status, parsed JSON or raw text, headers) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, headers = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, e.headers
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(), headers


def cli(redis, *args):
    """redis-cli (a client we did not write) against one instance."""
    p = subprocess.run(["redis-cli", "-p", str(redis.port), *map(str, args)], capture_output=True, text=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def on(redis, jid):
    """The job's hash exists on that instance."""
    return cli(redis, "EXISTS", f"llmq:job:{{{jid}}}") == "1"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if SHARED is None:
        pytest.skip("../shared (models) is not available")
    tmp = tmp_path_factory.mktemp("multi_redis")
    model_dir = SHARED / "models" / "stories260K"
    cfg = json.loads((model_dir / "config.json").read_text())
    ids, _ = whole_text_ids(model_dir, cfg["vocab_size"], {cfg["eos_token_id"]})
    a = RedisServer(tmp, free_port()).start()
    b = RedisServer(tmp, free_port()).start()
    procs = []
    try:
        for name, rs in (("alpha", a), ("beta", b)):
            mport = free_port()
            w = wu.Worker(model_dir, rs.url, name, tmp / f"worker-{name}.log", "--backend", "synthetic",
                          "--synthetic-rate", RATE, "--max-num-seqs", 8, "--metrics-port", mport)
            procs.append(w)
            ready(w, mport)
        # beta is not in --models: it is served because B's heartbeats name it
        gw = wu.Gateway(a.url, tmp / "gateway.log", "--models", "alpha", "--redis-for", f"beta={b.url}")
        procs.append(gw)
        yield {"a": a, "b": b, "gw": gw, "ids": ids, "tmp": tmp, "model_dir": model_dir, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()
        a.stop()
        b.stop()


def models_of(pair):
    st, body, _ = http("GET", pair["gw"].base + "/v1/models")
    assert st == 200, body
    return {m["id"]: m for m in body["data"]}


def wait_models(pair, names, timeout=10):
    deadline = time.time() + timeout
    while not names <= set(models_of(pair)):
        assert time.time() < deadline, models_of(pair)
        time.sleep(0.1)


def test_models_are_the_union_of_both_instances_heartbeats(pair):
    wait_models(pair, {"alpha", "beta"})
    ms = models_of(pair)
    # the context comes from each model's own heartbeats (beta's from B only)
    assert ms["alpha"]["max_model_len"] and ms["beta"]["max_model_len"]


def test_each_model_s_jobs_land_on_its_instance(pair):
    wait_models(pair, {"alpha", "beta"})
    c = openai.OpenAI(base_url=pair["gw"].base + "/v1", api_key="unused", max_retries=0, timeout=60)
    prompt = [1, 300, 301, 302, 303]
    want = expected(prompt, 12, pair["ids"])
    jobs = {}
    for model in ("alpha", "beta"):
        r = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        jobs[model] = r.id.removeprefix("cmpl-")
        assert r.usage.completion_tokens == 12
        streamed = [ev.id for ev in c.completions.create(model=model, prompt=prompt, max_tokens=12, stream=True)]
        jobs[model + "-stream"] = streamed[0].removeprefix("cmpl-")
    a, b = pair["a"], pair["b"]
    for model, jid in jobs.items():
        home, other = (b, a) if model.startswith("beta") else (a, b)
        assert on(home, jid) and not on(other, jid), (model, jid)
        assert cli(home, "HGET", f"llmq:job:{{{jid}}}", "state") == "done"
        assert wu.ids_of(wu.chunks(wu.connect(home.url), jid)) == want
    # beta's ids carry B's tag, alpha's (the default instance) none
    tag = jobs["beta"].split(".")[0]
    assert len(tag) == 7 and tag.startswith("r") and "." not in jobs["alpha"]
    assert jobs["beta-stream"].startswith(tag + ".")
    # the request streams too: beta's only on B, alpha's only on A
    assert cli(b, "EXISTS", "llmq:req:beta") == "1" and cli(a, "EXISTS", "llmq:req:beta") == "0"
    assert cli(a, "EXISTS", "llmq:req:alpha") == "1" and cli(b, "EXISTS", "llmq:req:alpha") == "0"


def events(base, jid, timeout=30):
    """The SSE chunks of GET /v1/jobs/{id}/events."""
    out = []
    with urllib.request.urlopen(f"{base}/v1/jobs/{jid}/events", timeout=timeout) as r:
        assert r.status == 200
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if out[-1].get("finish"):
                    break
    return out


def test_job_api_get_events_and_cancel_find_the_job_s_instance(pair):
    wait_models(pair, {"alpha", "beta"})
    base = pair["gw"].base
    prompt = [1, 500, 501, 502]
    for model in ("alpha", "beta"):
        st, body, _ = http("POST", base + "/v1/jobs", {"model": model, "prompt_ids": prompt, "max_tokens": 10})
        assert st in (200, 201, 202), body
        jid = body["id"]
        evs = events(base, jid)
        assert [t for e in evs for t in e.get("ids", [])] == expected(prompt, 10, pair["ids"])
        st, got, _ = http("GET", f"{base}/v1/jobs/{jid}")
        assert st == 200 and got["status"] == "done" and got["model"] == model, got
        # a long job, cancelled through the gateway, ends cancelled on its own instance
        st, body, _ = http("POST", base + "/v1/jobs", {"model": model, "prompt_ids": prompt, "max_tokens": 400,
                                                      "ignore_eos": True})
        assert st in (200, 201, 202), body
        long_id = body["id"]
        st, body, _ = http("DELETE", f"{base}/v1/jobs/{long_id}")
        assert st == 200 and body["status"] in ("cancelled", "cancelling"), body
        home = pair["b"] if model == "beta" else pair["a"]
        deadline = time.time() + 10
        while cli(home, "HGET", f"llmq:job:{{{long_id}}}", "state") != "cancelled":
            assert time.time() < deadline, cli(home, "HGETALL", f"llmq:job:{{{long_id}}}")
            time.sleep(0.05)
    # an id with B's tag that B does not hold is a 404 from B, not from A
    st, body, _ = http("GET", f"{base}/v1/jobs/{jid.split('.')[0]}.{'0' * 32}")
    assert st == 404, body


def test_llmq_loadtest_through_the_pair(pair):
    import lthelp
    wait_models(pair, {"alpha", "beta"})
    for model in ("alpha", "beta"):
        res = lthelp.run(pair["tmp"], "--target", pair["gw"].base, "--model", model, "--concurrency", 2,
                         "--requests", 6, "--prompt-tokens", 8, "--output-tokens", 8, "--stream", "--timeout", 30,
                         "--quiet", timeout=60)
        assert res.rc == 0, res
        assert res.j["completed"] == 6 and res.j["failed"] == 0, res.j


def metric(base, name):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name)}


def test_losing_one_instance_fails_only_its_model(pair):
    wait_models(pair, {"alpha", "beta"})
    base, b = pair["gw"].base, pair["b"]
    st, body, _ = http("POST", base + "/v1/jobs", {"model": "beta", "prompt_ids": [1, 2, 3], "max_tokens": 4})
    beta_job = body["id"]
    tag = beta_job.split(".")[0]
    b.proc.kill()
    b.proc.wait(10)
    deadline = time.time() + 10
    while True:  # the gateway sees the connection close
        st, body, hdr = http("POST", base + "/v1/completions", {"model": "beta", "prompt": [1, 2], "max_tokens": 4})
        if st == 503 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert st == 503 and body["error"]["code"] == "redis_unavailable", body
    assert tag in body["error"]["message"] and "beta" in body["error"]["message"]
    assert hdr["Retry-After"]
    st, body, _ = http("GET", f"{base}/v1/jobs/{beta_job}")
    assert st == 503 and tag in body["error"]["message"], body
    # alpha is served all along
    st, body, _ = http("POST", base + "/v1/completions", {"model": "alpha", "prompt": [1, 2], "max_tokens": 4})
    assert st == 200 and body["usage"]["completion_tokens"] == 4, body
    assert "beta" in models_of(pair)  # still listed: its instance is down, not its workers gone
    st, body, _ = http("GET", base + "/readyz")
    assert st == 200 and body["status"] == "degraded" and body["redis"] is False, body
    inst = {i["name"]: i for i in body["instances"]}
    assert inst["default"]["ready"] and not inst[tag]["ready"] and inst[tag]["models"] == ["beta"], body
    assert http("GET", base + "/health")[0] == 200
    m = metric(base, "llmq_gateway_redis")
    assert m[f'llmq_gateway_redis_instance_up{{instance="{tag}"}}'] == 0
    assert m['llmq_gateway_redis_instance_up{instance="default"}'] == 1 and m["llmq_gateway_redis_up"] == 0
    # B back (empty: no persistence): its worker and the gateway reconnect, beta serves again
    pair["b"] = RedisServer(pair["tmp"], b.port).start()
    deadline = time.time() + 15
    while True:
        st, body, _ = http("POST", base + "/v1/completions", {"model": "beta", "prompt": [1, 2], "max_tokens": 4})
        if st == 200 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert st == 200 and body["usage"]["completion_tokens"] == 4, body
    assert on(pair["b"], body["id"].removeprefix("cmpl-"))
