"""KEDA counts every priority lane (docs/protocol.md "Lanes", docs/kubernetes.md
"KEDA"): a worker group serves the model's three request streams, so its
ScaledObject has a lag and a pending trigger on each, any of which wakes the
group from zero."""
import helmtest as ht

LANES = {"": "", "high": "#high", "low": "#low"}  # trigger name suffix -> stream suffix


def test_a_lag_and_a_pending_trigger_per_lane():
    docs = ht.render({"workerGroups": [
        {"name": "a", "modelName": "model-a", "model": {"path": "a"}},
        {"name": "b", "modelName": "model-b", "model": {"path": "b"},
         "autoscaling": {"minReplicas": 0, "activationLagCount": 2}}]})
    for so in ht.of_kind(docs, "ScaledObject"):
        model = "model-a" if so["metadata"]["name"].endswith("-a") else "model-b"
        triggers = {t["name"]: t for t in so["spec"]["triggers"]}
        assert len(triggers) == 2 * len(LANES) == len(so["spec"]["triggers"])
        for lane, suffix in LANES.items():
            lag = triggers["lag" + (f"-{lane}" if lane else "")]["metadata"]
            pending = triggers["pending" + (f"-{lane}" if lane else "")]["metadata"]
            assert lag["stream"] == pending["stream"] == f"llmq:req:{model}{suffix}"
            assert lag["consumerGroup"] == pending["consumerGroup"] == "workers"
            # every lane's lag can wake the group; its target is the group's
            assert int(lag["lagCount"]) >= 1 and "activationLagCount" in lag
            assert "pendingEntriesCount" in pending
        if model == "model-b":
            assert {t["metadata"]["activationLagCount"] for t in triggers.values()
                    if t["name"].startswith("lag")} == {"2"}
