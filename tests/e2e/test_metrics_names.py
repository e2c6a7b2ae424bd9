"""Metrics a vLLM user's dashboards understand (issue 22, "Observability").

One real fleet for the whole module: redis-server, llmq-gateway and one
llmq-worker on stories260K.  Requests are queued (through the gateway's job
API and straight into Redis, as docs/protocol.md says) before the worker
starts, so each one waits in the queue first; the worker takes one at a time
(--max-num-seqs 1), so the rest wait in Redis, in the three priority lanes,
while it runs.  Then:
  - every worker series carries model_name, under vLLM's names (llmq: prefix);
  - time to first token and end-to-end latency count from arrival (the
    queue included), not from admission;
  - num_requests_waiting counts the requests still in Redis;
  - every metric name that a query of the Grafana dashboard or an alert of
    the PrometheusRule (both rendered from the chart) uses is in a scrape of
    the gateway or the worker: renaming a metric fails here.
Scrapes are read with prometheus_client's parser and queries with a PromQL
parser (promql-parser), neither of them ours.
"""
import http.client
import json
import sys
import time

import openai
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmqtest import ROOT, RedisServer, free_port
from worker_util import Gateway, Worker, connect, submit, wait_final

sys.path.insert(0, str(ROOT / "tests" / "helm"))
import helmtest  # noqa: E402  (tests/helm: the chart rendered by Helm's engine)

MODEL = "stories"
N_QUEUED = 24          # requests queued before the worker starts
N_LANES = 16           # of them in the high and the low priority lanes (half each), the rest in the default one
QUEUE_S = 1.2          # how long they wait, at least, before a worker exists
MAX_TOKENS = 48


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read().decode()


def families(text):
    """{name: family} of an exposition text (Prometheus' own parser)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def scraped_names(text):
    """Every name a query can select in a scrape: its samples' names
    (histograms: _bucket, _sum, _count), and the names of families declared
    with no series yet (a labelled counter before its first event: the
    query answers, with nothing)."""
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name + sfx for sfx in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("metrics")
    srv = RedisServer(tmp, free_port()).start()
    gw = w = None
    try:
        gw = Gateway(srv.url, tmp / "gw.log", "--models", MODEL)
        r = connect(srv.url)
        t_submit = time.time()
        ids = []
        for i in range(N_LANES):  # through the gateway, into the high and low lanes
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            c.request("POST", "/v1/jobs", body=json.dumps(dict(model=MODEL, prompt=f"Once upon a time {i}",
                                                               max_tokens=MAX_TOKENS, ignore_eos=True,
                                                               priority=1 if i % 2 else -1)),
                      headers={"Content-Type": "application/json"})
            resp = c.getresponse()
            assert resp.status == 202, resp.read()
            ids.append(json.loads(resp.read())["id"])
        for i in range(N_QUEUED - len(ids)):
            submit(r, f"q{i}", prompt="Once upon a time", max_tokens=MAX_TOKENS, ignore_eos=True)
            ids.append(f"q{i}")
        time.sleep(max(0.0, QUEUE_S - (time.time() - t_submit)))
        port = free_port()
        # the synthetic engine at a fixed rate (real scheduler, service and
        # metrics; no compute): the queue drains over ~1 s on any machine, so
        # the sampling below sees it (the real tiny model on fast kernels had
        # drained most of it before the first sample)
        w = Worker(shared_dir / "models" / "stories260K", srv.url, MODEL, tmp / "w.log",
                   "--metrics-port", port, "--max-num-seqs", 1, "--backend", "synthetic", "--synthetic-rate", 1000)
        # the worker's gauges while it drains the queue
        waiting_seen = []
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                st, body = get(port, "/metrics")
            except OSError:
                assert w.proc.poll() is None, "the worker exited"
                time.sleep(0.05)
                continue
            fam = families(body)
            if "llmq:num_requests_waiting" in fam:
                waiting_seen += [s.value for s in fam["llmq:num_requests_waiting"].samples]
            if all(r.hget(f"llmq:job:{{{j}}}", "state") in (b"done", b"failed") for j in ids):
                break
            time.sleep(0.05)
        wait_final(r, ids)
        # one synchronous OpenAI request and one refused, through the gateway
        client = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused")
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=9)
        _, worker_text = get(port, "/metrics")
        deadline = time.time() + 10
        while True:  # the gateway reads the queue lag every 2 s: its series once read
            _, gw_text = get(gw.port, "/metrics")
            if "llmq_queue_lag{" in gw_text or time.time() > deadline:
                break
            time.sleep(0.1)
        yield dict(worker=worker_text, gateway=gw_text, waiting_seen=waiting_seen, n=len(ids) + 1)
        # a clean exit (under ASan: LeakSanitizer's check of both at exit)
        assert w.term(30) == 0, (tmp / "w.log").read_text()[-2000:]
        gw.stop()
        assert gw.proc.returncode == 0, (tmp / "gw.log").read_text()[-2000:]
    finally:
        if w:
            w.stop()
        if gw:
            gw.stop()
        srv.stop()


# vLLM's names (docs.vllm.ai, "Production Metrics") and types, under our prefix.
VLLM_NAMES = {
    "llmq:num_requests_running": "gauge",
    "llmq:num_requests_waiting": "gauge",
    "llmq:kv_cache_usage_perc": "gauge",
    "llmq:prompt_tokens": "counter",            # prometheus_client drops a counter's _total
    "llmq:generation_tokens": "counter",
    "llmq:num_preemptions": "counter",
    "llmq:request_success": "counter",
    "llmq:request_prompt_tokens": "histogram",
    "llmq:request_generation_tokens": "histogram",
    "llmq:time_to_first_token_seconds": "histogram",
    "llmq:inter_token_latency_seconds": "histogram",
    "llmq:request_time_per_output_token_seconds": "histogram",
    "llmq:e2e_request_latency_seconds": "histogram",
    "llmq:request_queue_time_seconds": "histogram",
    "llmq:request_inference_time_seconds": "histogram",
    "llmq:request_prefill_time_seconds": "histogram",
    "llmq:request_decode_time_seconds": "histogram",
}


def test_vllm_names_with_model_name_on_every_series(fleet):
    fam = families(fleet["worker"])
    for name, kind in VLLM_NAMES.items():
        assert name in fam, f"{name} missing from the worker's /metrics"
        assert fam[name].type == kind, (name, fam[name].type)
    for f in fam.values():
        for s in f.samples:
            assert s.labels.get("model_name") == MODEL, f"{s.name}{s.labels} has no model_name"
    n = fleet["n"]
    count = {s.name: s.value for f in fam.values() for s in f.samples if s.name.endswith("_count")}
    for h in ("llmq:e2e_request_latency_seconds", "llmq:request_prompt_tokens", "llmq:request_generation_tokens",
              "llmq:time_to_first_token_seconds", "llmq:request_decode_time_seconds"):
        assert count[h + "_count"] == n, h
    gen = {float(s.labels["le"]): s.value for s in fam["llmq:request_generation_tokens"].samples
           if s.name.endswith("_bucket")}
    assert gen[20] == 1 and gen[50] == n  # at most 4 tokens once, MAX_TOKENS (48) n-1 times
    kv = fam["llmq:kv_cache_usage_perc"].samples[0].value
    assert 0 <= kv <= 1


def test_time_to_first_token_and_e2e_count_the_queue(fleet):
    """Each queued request waited QUEUE_S before a worker even existed:
    its TTFT, E2E and queue time are all above that (from arrival); TTFT
    from admission, as before, was milliseconds on this model."""
    fam = families(fleet["worker"])

    def buckets(name):
        return {float(s.labels["le"]): s.value for s in fam[name].samples if s.name.endswith("_bucket")}
    n_queued = N_QUEUED
    for name in ("llmq:time_to_first_token_seconds", "llmq:e2e_request_latency_seconds",
                 "llmq:request_queue_time_seconds"):
        b = buckets(name)
        # the bucket le="1" holds only the one request sent after the worker was up
        assert b[1] <= fleet["n"] - n_queued, (name, b)
        assert b[float("inf")] == fleet["n"], (name, b)
    prefill = buckets("llmq:request_prefill_time_seconds")
    assert prefill[1] >= n_queued  # admission to first token: no queue in it


def test_waiting_counts_the_redis_backlog(fleet):
    """With one sequence at a time, the queued requests wait in Redis, not in
    the worker: num_requests_waiting counts them, in every priority lane (the
    worker's own waiting sequences were 0 or 1 all along; the default lane
    alone never held more than N_QUEUED - N_LANES)."""
    assert max(fleet["waiting_seen"], default=0) >= N_QUEUED - N_LANES + 6, fleet["waiting_seen"][:20]


# ------------------------------------------------------------ dashboard, alerts

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$model_name": ".*"}


def metric_names(expr):
    """The metric names a PromQL expression selects (Grafana's variables
    replaced by what Grafana would put there)."""
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    names = set()

    def walk(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        for attr in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
            v = getattr(node, attr, None)
            if isinstance(v, list):
                for x in v:
                    walk(x)
            elif v is not None and not isinstance(v, (str, int, float)):
                walk(v)
    walk(promql_parser.parse(expr))
    return names


def chart_queries():
    """(where, expr) of every dashboard query and alert, as the chart renders them."""
    docs = helmtest.render({"metrics": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}})
    cm = helmtest.one(docs, "ConfigMap", "demo-llmq-dashboard")
    dash = json.loads(cm["data"]["llmq-dashboard.json"])
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":  # label_values(<metric>, <label>)
            q = v["query"]["query"]
            out.append((f"variable {v['name']}", q[len("label_values("):q.index(",")]))
    for g in helmtest.one(docs, "PrometheusRule")["spec"]["groups"]:
        for rule in g["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"]))
    return out


def missing_names(queries, scraped):
    return [(where, n) for where, e in queries for n in sorted(metric_names(e)) if n not in scraped]


def test_dashboard_and_alerts_use_only_scraped_metrics(fleet):
    scraped = scraped_names(fleet["worker"]) | scraped_names(fleet["gateway"])
    queries = chart_queries()
    assert len(queries) > 30
    assert missing_names(queries, scraped) == []
    used = set().union(*(metric_names(e) for _, e in queries))
    # what the dashboard is for: TTFT/TPOT/E2E, throughput, queue lag per
    # model and lane, KV usage, prefix cache hit rate, worker groups, errors
    for name in ("llmq:time_to_first_token_seconds_bucket", "llmq:inter_token_latency_seconds_bucket",
                 "llmq:e2e_request_latency_seconds_bucket", "llmq:generation_tokens_total", "llmq_queue_lag",
                 "llmq:kv_cache_usage_perc", "llmq:prefix_cache_hits_total", "llmq:prefix_cache_queries_total",
                 "llmq:num_requests_running", "llmq:request_success_total", "llmq_gateway_http_requests_total"):
        assert name in used, name
    # and a renamed metric is caught
    assert missing_names([("x", "rate(llmq:generation_tokens_renamed_total[5m])")], scraped) == [
        ("x", "llmq:generation_tokens_renamed_total")]
    lag = families(fleet["gateway"])["llmq_queue_lag"]
    assert {s.labels.get("model_name") for s in lag.samples} == {MODEL}
