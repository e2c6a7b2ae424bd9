"""values.schema.json (and the chart's cross-field checks) refuse wrong
values files with a message that names what is wrong; helm install, template
and lint all stop on it."""
import pytest

import helmtest as ht

GROUP = {"name": "g", "modelName": "m", "model": {"hfRepo": "org/model", "numAttentionHeads": 32}}


def group(**kw):
    g = ht.merge(GROUP, kw)
    return {"workerGroups": [g]}


BAD = {
    # values: (what Helm must say)
    "negative tp": (group(tp=-2), ["/workerGroups/0/tp", "minimum"]),
    "zero tp": (group(tp=0), ["/workerGroups/0/tp", "minimum"]),
    "tp as text": (group(tp="two"), ["/workerGroups/0/tp", "integer"]),
    "tp not dividing heads": (group(tp=3), ["/workerGroups/0/model/numAttentionHeads", "multipleOf", "3"]),
    "tp 6 vs 32 heads": (group(tp=6), ["numAttentionHeads", "multipleOf", "6"]),
    "missing model": ({"workerGroups": [{"name": "g", "modelName": "m"}]}, ["/workerGroups/0", "model"]),
    "model with neither repo nor path": (group(model={"hfRepo": "", "path": ""}), ["/workerGroups/0/model"]),
    "missing modelName": ({"workerGroups": [{"name": "g", "model": {"path": "p"}}]}, ["modelName"]),
    "bad modelName": (group(modelName="my model"), ["/workerGroups/0/modelName"]),
    "no groups": ({"workerGroups": []}, ["/workerGroups", "minItems"]),
    "bad repo id": (group(model={"hfRepo": "not a repo"}), ["/workerGroups/0/model/hfRepo"]),
    "unknown group key": (group(gpus=2), ["/workerGroups/0", "gpus"]),
    "misspelt top-level key": ({"wokerGroups": []}, ["wokerGroups"]),
    "unknown backend": (group(backend="rocm"), ["/workerGroups/0/backend"]),
    "negative minReplicas": (group(autoscaling={"minReplicas": -1}), ["/workerGroups/0/autoscaling/minReplicas"]),
    "zero lagCount": ({"workerDefaults": {"autoscaling": {"lagCount": 0}}}, ["/workerDefaults/autoscaling/lagCount"]),
    "bad shm size": (group(shmSize="lots"), ["/workerGroups/0/shmSize"]),
    "external redis without url": ({"redis": {"enabled": False}}, ["/redis/external", "url"]),
    "redis url with password": ({"redis": {"enabled": False, "external": {"url": "redis://:pw@r:6379/0"}}},
                                ["/redis/external/url"]),
    "unknown modelCache type": ({"modelCache": {"type": "hostPath"}}, ["/modelCache/type"]),
    "bad route tls": ({"openshift": {"enabled": True, "route": {"tls": "yes"}}}, ["/openshift/route/tls"]),
    "bad prefix": ({"queuePrefix": "has space"}, ["/queuePrefix"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_schema_rejects(case):
    vals, words = BAD[case]
    err = ht.render_error(vals)
    assert err is not None, f"{case}: rendered"
    assert "values don't meet the specifications of the schema" in err
    for w in words:
        assert w in err, f"{case}: {w!r} not in:\n{err}"


def test_lint_reports_the_same():
    report = ht.lint(group(tp=3))
    assert report["errors"] and any("multipleOf" in e for e in report["errors"])


def test_template_checks_tp_from_defaults():
    """tp inherited from workerDefaults is out of the schema's sight; the chart checks it."""
    err = ht.render_error({"workerDefaults": {"tp": 3}, **group()})
    assert err and "tp 3 does not divide the model's 32 attention heads" in err


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16, 32])
def test_valid_tp_renders(tp):
    assert ht.render_error(group(tp=tp, backend="cuda")) is None


def test_every_shipped_values_file_passes():
    assert ht.render_error({}) is None
    for p in ht.PRESETS.glob("*.yaml"):
        assert ht.render_error(ht.preset(p.stem)) is None, p.name
