"""The worker's coalescing window (issue 25, --chunk-interval-ms) is a chart
value, workerDefaults.chunkIntervalMs and per group: rendered as the flag,
with the binary's own default (read from its --help, not from the chart),
refused by the schema when the binary would refuse it, and the rendered
command lines are ones the real llmq-worker accepts."""
import helmtest as ht
from test_helm_gateway_options import accepted, help_defaults, worker_containers

FLAG = "--chunk-interval-ms"


def test_chunk_interval_default_values_and_refusals():
    default = help_defaults("llmq-worker")[FLAG].rstrip(":")  # "(default 0: ..."
    workers = worker_containers(ht.render())
    assert workers and {ht.arg(c, FLAG) for c in workers.values()} == {default}

    docs = ht.render({
        "workerDefaults": {"chunkIntervalMs": 20},
        "workerGroups": [
            {"name": "a", "modelName": "model-a", "model": {"path": "a"}},
            {"name": "b", "modelName": "model-b", "model": {"path": "b"}, "chunkIntervalMs": 0},
            {"name": "c", "modelName": "model-c", "model": {"path": "c"}, "tp": 4, "nodes": 2,
             "chunkIntervalMs": 5}]})
    workers = worker_containers(docs)
    assert {name: ht.arg(c, FLAG) for name, c in workers.items()} == {
        f"{ht.RELEASE}-llmq-a": "20", f"{ht.RELEASE}-llmq-b": "0", f"{ht.RELEASE}-llmq-c": "5"}
    for c in workers.values():  # llmq-worker-ranks hands its arguments to llmq-worker
        ok, err = accepted("llmq-worker", c["args"])
        assert ok, err

    for vals in ({"workerDefaults": {"chunkIntervalMs": -1}},
                 {"workerDefaults": {"chunkIntervalMs": 2 ** 31}},
                 {"workerGroups": [{"name": "a", "modelName": "m", "model": {"path": "a"}, "chunkIntervalMs": "20"}]}):
        assert ht.render_error(vals), vals
