"""The KV cache's element type (issue 24, --kv-dtype) is a chart value,
workerDefaults.kvDtype and per group: rendered as the flag (auto by
default), refused by the schema for a name the binary refuses, and the
rendered command lines are ones the real llmq-worker accepts."""
import subprocess

import helmtest as ht
from llmqtest import BUILD
from test_helm_gateway_options import accepted, worker_containers

FLAG = "--kv-dtype"


def test_kv_dtype_default_values_and_refusals():
    workers = worker_containers(ht.render())
    assert workers and {ht.arg(c, FLAG) for c in workers.values()} == {"auto"}

    docs = ht.render({
        "workerDefaults": {"kvDtype": "bf16"},
        "workerGroups": [
            {"name": "a", "modelName": "model-a", "model": {"path": "a"}},
            {"name": "b", "modelName": "model-b", "model": {"path": "b"}, "kvDtype": "f32"},
            {"name": "c", "modelName": "model-c", "model": {"path": "c"}, "tp": 4, "nodes": 2, "kvDtype": "f16"}]})
    workers = worker_containers(docs)
    assert {name: ht.arg(c, FLAG) for name, c in workers.items()} == {
        f"{ht.RELEASE}-llmq-a": "bf16", f"{ht.RELEASE}-llmq-b": "f32", f"{ht.RELEASE}-llmq-c": "f16"}
    for c in workers.values():  # llmq-worker-ranks hands its arguments to llmq-worker
        ok, err = accepted("llmq-worker", c["args"])
        assert ok, err

    # the schema refuses what the binary refuses
    for bad in ("fp16", "int8", "", 16):
        assert ht.render_error({"workerDefaults": {"kvDtype": bad}}), bad
        if isinstance(bad, str):
            r = subprocess.run([str(BUILD / "llmq-worker"), "--model", "x", "--model-name", "m", FLAG, bad],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 2 and FLAG in r.stderr, (bad, r.stderr)
