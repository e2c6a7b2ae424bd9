"""The chart exposes the gateway's tenant and queue options and the worker's
priority-lane burst (issue 23; docs/operations.md, "Limits"): each is a value
with a schema entry, rendered as the binary's flag, with the binary's own
default (read from its --help, not from the chart), and the rendered command
lines are ones the real binaries accept."""
import re
import subprocess

import helmtest as ht
from llmqtest import BUILD

GATEWAY = f"{ht.RELEASE}-llmq-gateway"
FLAGS = {  # chart value -> the gateway's flag
    "queueTimeoutSeconds": "--queue-timeout",
    "priorityRange": "--priority-range",
    "keyMaxJobs": "--key-max-jobs",
    "keyTokensPerMinute": "--key-tokens-per-minute",
}


def help_defaults(binary):
    """flag -> the default its --help names ("(default X" or "(default X;")."""
    out = subprocess.run([str(BUILD / binary), "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    found = {}
    flag = None
    for line in out.stdout.splitlines():
        m = re.match(r"\s+(--[a-z-]+)", line)
        if m:
            flag = m.group(1)
        d = re.search(r"\(default ([^;) ]+)", line)
        if d and flag and flag not in found:
            found[flag] = d.group(1)
    return found


def gateway_container(docs):
    pod = ht.one(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    return pod, next(c for c in pod["containers"] if c["name"] == "gateway")


def worker_containers(docs):
    return {d["metadata"]["name"]: c for d, _, t in ht.pod_templates(docs) if d["metadata"]["name"] != GATEWAY
            for c in t["spec"]["containers"] if c["name"] == "worker"}


def accepted(binary, args):
    """Run the real binary on a rendered command line, --help last: every flag
    before it must be known (and, for the gateway, its value valid) for it to
    reach --help and exit 0."""
    out = subprocess.run([str(BUILD / binary), *args, "--help"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and not out.stderr, out.stderr


def test_defaults_are_the_binaries_defaults():
    docs = ht.render()
    _, gw = gateway_container(docs)
    defaults = help_defaults("llmq-gateway")
    for value, flag in FLAGS.items():
        assert ht.arg(gw, flag) == defaults[flag], (value, flag)
    assert "--admin-key-file" not in gw["args"]
    burst = help_defaults("llmq-worker")["--lane-burst"]
    workers = worker_containers(docs)
    assert workers and {ht.arg(c, "--lane-burst") for c in workers.values()} == {burst}


def test_values_reach_the_flags_and_the_binaries_accept_them():
    docs = ht.render({
        "gateway": {"queueTimeoutSeconds": 0, "priorityRange": "-3:7", "keyMaxJobs": 50,
                    "keyTokensPerMinute": 120000,
                    "apiKeys": {"existingSecret": "keys"},
                    "adminKeys": {"existingSecret": "admins", "secretKey": "ops"}},
        "workerDefaults": {"laneBurst": 2},
        "workerGroups": [
            {"name": "a", "modelName": "model-a", "model": {"path": "a"}, "backend": "cpu"},
            {"name": "b", "modelName": "model-b", "model": {"path": "b"}, "laneBurst": 0},
            {"name": "c", "modelName": "model-c", "model": {"path": "c"}, "tp": 4, "nodes": 2}]})
    # (the LeaderWorkerSet's args are plain strings: its 1.3 MB CRD is left to test_helm_render)
    assert [p for d in docs if d["kind"] != "LeaderWorkerSet" for p in ht.validate(d)] == []
    pod, gw = gateway_container(docs)
    assert [ht.arg(gw, f) for f in FLAGS.values()] == ["0", "-3:7", "50", "120000"]
    # the admin keys: their own Secret, mounted read-only where the flag points
    path = ht.arg(gw, "--admin-key-file")
    mount = next(m for m in gw["volumeMounts"] if m["name"] == "admin-keys")
    vol = next(v for v in pod["volumes"] if v["name"] == "admin-keys")
    assert mount["readOnly"] and path == f"{mount['mountPath']}/ops"
    assert vol["secret"]["secretName"] == "admins" and vol["secret"]["items"] == [{"key": "ops", "path": "ops"}]
    assert ht.arg(gw, "--api-key-file") != path
    # admin keys alone turn authentication on: no "accepts requests without a key" warning
    assert "WARNING" not in ht.notes({"gateway": {"adminKeys": {"existingSecret": "admins"}}})
    ok, err = accepted("llmq-gateway", gw["args"])
    assert ok, err

    workers = worker_containers(docs)
    bursts = {name: ht.arg(c, "--lane-burst") for name, c in workers.items()}
    assert bursts == {f"{ht.RELEASE}-llmq-a": "2", f"{ht.RELEASE}-llmq-b": "0", f"{ht.RELEASE}-llmq-c": "2"}
    for c in workers.values():  # llmq-worker-ranks hands its arguments to llmq-worker
        ok, err = accepted("llmq-worker", c["args"])
        assert ok, err


def test_values_the_binaries_would_refuse_fail_the_render():
    bad = [
        {"gateway": {"priorityRange": "10:-10"}},           # LO > HI
        {"gateway": {"priorityRange": "-3000000000:0"}},    # past 32 bits
        {"gateway": {"priorityRange": "5"}},
        {"gateway": {"priorityRange": "010:20"}},           # Helm would read octal
        {"gateway": {"priorityRange": "1:2:3"}},
        {"gateway": {"queueTimeoutSeconds": -1}},
        {"gateway": {"queueTimeoutSeconds": 86401}},
        {"gateway": {"keyMaxJobs": -1}},
        {"gateway": {"keyTokensPerMinute": "many"}},
        {"gateway": {"adminKeys": {"existingSecret": "a", "secretKey": ""}}},
        {"gateway": {"adminKeys": {"keys": ["k"]}}},        # keys never go in values
        {"workerDefaults": {"laneBurst": -1}},
        {"workerGroups": [{"name": "a", "modelName": "m", "model": {"path": "a"}, "laneBurst": "4"}]},
    ]
    for vals in bad:
        assert ht.render_error(vals), vals
    assert "priorityRange" in ht.render_error({"gateway": {"priorityRange": "10:-10"}})
