"""The chart's Grafana dashboard and PrometheusRule (issue 22, "Observability"):
off by default; the dashboard a ConfigMap for Grafana's sidecar, holding the
one copy of the JSON (helm/llmq/dashboards/, which docs/grafana/ points to);
the rule only where the Prometheus Operator's API exists.  That every query
and alert names metrics a running fleet exposes is
tests/e2e/test_metrics_names.py's part."""
import json
import re

import promql_parser

import helmtest as ht
from llmqtest import ROOT

ON = {"metrics": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}}
DASHBOARD = ht.CHART / "dashboards" / "llmq-dashboard.json"
# The fields of a rule in the Prometheus Operator's PrometheusRule CRD
# (monitoring.coreos.com/v1, spec.groups[].rules[]); no CRD of it is in
# ../shared/schemas, so the shape is checked here.
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def dashboard_cm(docs):
    return [d for d in ht.of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "demo-llmq-dashboard"]


def test_off_by_default():
    docs = ht.render()
    assert dashboard_cm(docs) == [] and ht.of_kind(docs, "PrometheusRule") == []


def test_dashboard_configmap_for_the_sidecar():
    docs = ht.render(ON)
    cm, = dashboard_cm(docs)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert ht.validate(cm) == []
    # the chart's one copy, as it is
    assert json.loads(cm["data"]["llmq-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and all(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    # docs/ points at it instead of holding a second copy
    assert list((ROOT / "docs" / "grafana").glob("*.json")) == []
    assert "helm/llmq/dashboards/llmq-dashboard.json" in (ROOT / "docs" / "grafana" / "README.md").read_text()
    # the sidecar's namespace and folder annotation, when asked for
    cm, = dashboard_cm(ht.render(ht.merge(ON, {"metrics": {"grafanaDashboard": {
        "namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}}}})))
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert ht.validate(cm) == []


def test_prometheus_rule_only_with_the_operator_api():
    assert ht.of_kind(ht.render(ON, apis=()), "PrometheusRule") == []
    assert len(dashboard_cm(ht.render(ON, apis=()))) == 1  # a ConfigMap needs no operator
    rule = ht.one(ht.render(ON), "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {"LlmqQueueGrowingWithoutWorkers", "LlmqHighErrorRate", "LlmqTimeToFirstTokenSLO"} <= {
        r["alert"] for r in rules}
    for r in rules:
        assert set(r) <= RULE_FIELDS, r
        promql_parser.parse(r["expr"])  # raises on a malformed expression
        assert DURATION.match(r["for"]), r["for"]
        assert r["labels"]["severity"] in ("warning", "critical")
    # the thresholds come from values
    tuned = ht.one(ht.render(ht.merge(ON, {"metrics": {"prometheusRule": {
        "ttftSeconds": 2.5, "ttftQuantile": 0.99, "errorRatio": 0.01, "labels": {"release": "kps"}}}})),
        "PrometheusRule")
    ttft = next(r for g in tuned["spec"]["groups"] for r in g["rules"] if r["alert"] == "LlmqTimeToFirstTokenSLO")
    assert "histogram_quantile(0.99," in ttft["expr"] and ttft["expr"].rstrip().endswith("> 2.5")
    assert tuned["metadata"]["labels"]["release"] == "kps"


def test_values_schema_refuses_nonsense():
    assert ht.render_error(ht.merge(ON, {"metrics": {"prometheusRule": {"errorRatio": 2}}}))
    assert ht.render_error(ht.merge(ON, {"metrics": {"prometheusRule": {"ttftQuantile": 1}}}))
    assert ht.render_error(ht.merge(ON, {"metrics": {"grafanaDashboard": {"enabeld": True}}}))
