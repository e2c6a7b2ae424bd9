"""Worker groups and their autoscaling as rendered by helm/llmq: GPUs equal
to tensor parallelism, one set of queue names shared by gateway, workers and
KEDA, LeaderWorkerSet groups, /dev/shm, draining, the model download."""
import pytest

import helmtest as ht

PRESETS = ["mistral-7b-2xT4", "llama3-8b-2xT4", "falcon-40b-8xA10G", "falcon-40b-2x4xA10G-lws",
           "mixtral-8x7b-8xA10G"]


def workers(docs):
    """(workload, role, pod template, worker container) of every worker pod."""
    out = []
    for obj, role, tmpl in ht.pod_templates(docs):
        if tmpl["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
            out.append((obj, role, tmpl, tmpl["spec"]["containers"][0]))
    return out


def gateway(docs):
    dep = ht.one(docs, "Deployment", f"{ht.RELEASE}-llmq-gateway")
    return dep["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("name", PRESETS)
def test_gpu_requests_equal_tp(name):
    docs = ht.render(ht.values(name))
    group = ht.preset(name)["workerGroups"][0]
    found = workers(docs)
    assert found
    for obj, role, tmpl, c in found:
        tp, nodes = group["tp"], group.get("nodes", 1)
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert int(ht.arg(c, "--tp")) == tp
        if obj["kind"] == "Deployment":
            assert gpus == tp
            assert c["command"][-1] == "llmq-worker"
        else:
            assert gpus * obj["spec"]["leaderWorkerTemplate"]["size"] == tp
            assert int(ht.env(c, "LLMQ_RANKS_PER_POD")["value"]) == gpus
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tmpl["spec"]["tolerations"]


def test_cpu_group_requests_no_gpu():
    (_, _, tmpl, c), = workers(ht.render())
    assert ht.arg(c, "--backend") == "cpu"
    assert not any("gpu" in k for part in c["resources"].values() for k in part)
    assert "tolerations" not in tmpl["spec"]  # `tolerations: []` in the group wins over the default


def test_group_overrides_win_even_when_falsy():
    """false / 0 / [] in a group replace workerDefaults (Sprig's merge would keep the default)."""
    docs = ht.render({"workerGroups": [{
        "name": "a", "modelName": "a", "model": {"path": "a"}, "tp": 1,
        "autoscaling": {"minReplicas": 0}, "pdb": {"enabled": False}}]})
    assert ht.one(docs, "ScaledObject")["spec"]["minReplicaCount"] == 0
    assert not ht.of_kind(docs, "PodDisruptionBudget") or all(
        "gateway" in p["metadata"]["name"] for p in ht.of_kind(docs, "PodDisruptionBudget"))


@pytest.mark.parametrize("name", [None] + PRESETS)
def test_one_source_of_truth_for_queue_names(name):
    vals = ht.values(name) if name else {}
    docs = ht.render(vals)
    gw = gateway(docs)
    served = ht.arg(gw, "--models").split(",")
    prefix = ht.arg(gw, "--prefix")
    for obj, role, tmpl, c in workers(docs):
        model = ht.arg(c, "--model-name")
        assert model in served
        assert ht.arg(c, "--prefix") == prefix
        so = ht.one(docs, "ScaledObject", obj["metadata"]["name"])
        assert so["spec"]["scaleTargetRef"] == {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"]}
        triggers = {t["name"]: t for t in so["spec"]["triggers"]}
        # one lag and one pending trigger per priority lane (test_helm_lanes.py)
        assert set(triggers) == {"lag", "pending", "lag-high", "pending-high", "lag-low", "pending-low"}
        for name, t in triggers.items():
            assert t["type"] == "redis-streams"
            lane = name.partition("-")[2]
            assert t["metadata"]["stream"] == f"{prefix}req:{model}" + (f"#{lane}" if lane else "")
            assert t["metadata"]["consumerGroup"] == "workers"  # the protocol's group (docs/protocol.md)
            host, port = t["metadata"]["address"].rsplit(":", 1)
            assert f"://{host}:{port}/" in ht.arg(c, "--redis")  # KEDA reads the Redis the workers use
        assert int(triggers["lag"]["metadata"]["lagCount"]) >= 1
        assert int(triggers["lag"]["metadata"]["activationLagCount"]) >= 0
        assert int(triggers["pending"]["metadata"]["pendingEntriesCount"]) == int(ht.arg(c, "--max-num-seqs"))


def test_prefix_changes_every_name_together():
    docs = ht.render({"queuePrefix": "teamA:"})
    (_, _, _, c), = workers(docs)
    assert ht.arg(c, "--prefix") == ht.arg(gateway(docs), "--prefix") == "teamA:"
    so = ht.one(docs, "ScaledObject")
    assert {t["metadata"]["stream"] for t in so["spec"]["triggers"]} == {
        "teamA:req:qwen2.5-0.5b-instruct", "teamA:req:qwen2.5-0.5b-instruct#high", "teamA:req:qwen2.5-0.5b-instruct#low"}


def test_keda_auth_comes_from_the_redis_secret():
    docs = ht.render()
    (_, _, _, c), = workers(docs)
    ref = ht.env(c, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    ta = ht.one(docs, "TriggerAuthentication")
    assert ta["spec"]["secretTargetRef"] == [{"parameter": "password", "name": ref["name"], "key": ref["key"]}]
    so = ht.one(docs, "ScaledObject")
    for t in so["spec"]["triggers"]:
        assert t["authenticationRef"]["name"] == ta["metadata"]["name"]
        assert "password" not in t["metadata"] and "passwordFromEnv" not in t["metadata"]
    secret = ht.one(docs, "Secret", ref["name"])
    assert ref["key"] in secret["data"]


def test_external_redis():
    docs = ht.render({"redis": {"enabled": False, "external": {
        "url": "rediss://redis.example.com:6380/2", "existingSecret": "ext", "secretKey": "pw"}}})
    assert not ht.of_kind(docs, "StatefulSet") and not ht.of_kind(docs, "Secret")
    assert not ht.of_kind(docs, "NetworkPolicy")
    (_, _, _, c), = workers(docs)
    # rediss://: the worker talks to its pod's TLS proxy (test_helm_day_one.py).
    assert ht.arg(c, "--redis") == "redis://127.0.0.1:6380/2"
    assert ht.env(c, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"] == {"name": "ext", "key": "pw"}
    for t in ht.one(docs, "ScaledObject")["spec"]["triggers"]:
        md = t["metadata"]
        assert (md["address"], md["databaseIndex"], md["enableTLS"]) == ("redis.example.com:6380", "2", "true")
    ta = ht.one(docs, "TriggerAuthentication")
    assert ta["spec"]["secretTargetRef"][0] == {"parameter": "password", "name": "ext", "key": "pw"}
    # Without a password: no auth anywhere.
    docs = ht.render({"redis": {"enabled": False, "external": {"url": "redis://r:6379/0"}}})
    (_, _, _, c), = workers(docs)
    assert ht.arg(c, "--redis") == "redis://r:6379/0" and ht.env(c, "LLMQ_REDIS_PASSWORD") is None
    assert not ht.of_kind(docs, "TriggerAuthentication")
    assert all("authenticationRef" not in t for t in ht.one(docs, "ScaledObject")["spec"]["triggers"])


def test_scale_to_zero():
    docs = ht.render({"workerDefaults": {"autoscaling": {"minReplicas": 0}}})
    so = ht.one(docs, "ScaledObject")["spec"]
    assert so["minReplicaCount"] == 0
    (obj, _, tmpl, c), = workers(docs)
    startup = c["startupProbe"]
    load_budget = startup["periodSeconds"] * startup["failureThreshold"]
    # A group is never scaled away while it may still be loading its model.
    assert so["cooldownPeriod"] > load_budget and so["initialCooldownPeriod"] > load_budget
    assert "replicas" not in obj["spec"]  # KEDA owns replicas; upgrades must not reset them
    # ... and the chart refuses a cooldown shorter than the load budget.
    err = ht.render_error({"workerDefaults": {"autoscaling": {"minReplicas": 0, "cooldownPeriod": 300}}})
    assert err and "cooldownPeriod 300 must exceed loadTimeoutSeconds 900" in err


def test_without_keda_replicas_are_fixed():
    docs = ht.render({"keda": {"enabled": False}, "workerDefaults": {"replicas": 3}})
    assert not ht.of_kind(docs, "ScaledObject") and not ht.of_kind(docs, "TriggerAuthentication")
    (obj, _, _, _), = workers(docs)
    assert obj["spec"]["replicas"] == 3
    np = ht.one(docs, "NetworkPolicy")
    assert not any("namespaceSelector" in peer for rule in np["spec"]["ingress"] for peer in rule["from"])


def test_lws_group():
    docs = ht.render(ht.values("falcon-40b-2x4xA10G-lws"))
    lws = ht.one(docs, "LeaderWorkerSet")
    assert not ht.of_kind(docs, "Deployment") or all(
        "gateway" in d["metadata"]["name"] for d in ht.of_kind(docs, "Deployment"))
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2 and lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    roles = {}
    for obj, role, tmpl, c in workers(docs):
        roles[role] = (tmpl, c)
        assert c["command"][-1] == "llmq-worker-ranks"
        assert ht.arg(c, "--tp") == "8" and ht.arg(c, "--group") == "$(LLMQ_GROUP)"
        assert "--rank" not in c["args"]  # llmq-worker-ranks adds LWS_WORKER_INDEX*k+i
        assert "--metrics-port" not in c["args"]  # only global rank 0 serves; the script adds it
        gi = ht.env(c, "LWS_GROUP_INDEX")["valueFrom"]["fieldRef"]["fieldPath"]
        assert gi == "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"
        assert ht.env(c, "LLMQ_GROUP")["value"] == f"{lws['metadata']['name']}-$(LWS_GROUP_INDEX)"
        assert ht.env(c, "LLMQ_RANKS_PER_POD")["value"] == "4"
        assert ht.env(c, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert ht.env(c, "LLMQ_TP_PORT")["value"] == "29500"
        assert ht.env(c, "LLMQ_METRICS_ADDR")["value"] == "0.0.0.0"  # probes come to the pod's IP
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert set(roles) == {"leader", "worker"}
    leader, peer = roles["leader"][1], roles["worker"][1]
    assert leader["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert leader["ports"][0]["containerPort"] == int(ht.env(leader, "LLMQ_METRICS_PORT")["value"])
    assert {"name": "tp", "containerPort": 29500, "protocol": "TCP"} in leader["ports"]  # the peers' TCP
    # Peer ranks serve no HTTP: a probe would never pass.
    assert not any(k in peer for k in ("readinessProbe", "startupProbe", "livenessProbe", "ports"))
    so = ht.one(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert "replicas" not in lws["spec"]


def test_lws_shape_is_checked():
    base = {"name": "g", "modelName": "m", "model": {"path": "m"}, "backend": "cuda"}
    err = ht.render_error({"workerGroups": [dict(base, tp=6, nodes=4)]})
    assert err and "tp 6 must be a multiple of nodes 4" in err
    err = ht.render_error({"workerGroups": [dict(base, backend="cpu", tp=2, nodes=2)]})
    assert err and "nodes > 1 needs backend cuda" in err


@pytest.mark.parametrize("name", [None] + PRESETS)
def test_shm_and_drain(name):
    docs = ht.render(ht.values(name) if name else {})
    for obj, role, tmpl, c in workers(docs):
        vols = {v["name"]: v for v in tmpl["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        shm = vols[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"]
        drain = int(ht.arg(c, "--drain-timeout"))
        assert tmpl["spec"]["terminationGracePeriodSeconds"] > drain
    gw = ht.one(docs, "Deployment", f"{ht.RELEASE}-llmq-gateway")["spec"]["template"]["spec"]
    assert gw["terminationGracePeriodSeconds"] > int(ht.arg(gw["containers"][0], "--drain-timeout"))


def test_model_download_init_container():
    docs = ht.render(ht.values("llama3-8b-2xT4", {"modelCache": {"huggingFace": {
        "tokenSecret": "hf-token", "tokenSecretKey": "tok"}}}))
    (_, _, tmpl, c), = workers(docs)
    fetch, = tmpl["spec"]["initContainers"]
    assert fetch["command"] == ["llmq-fetch-model"]
    assert ht.arg(fetch, "--repo") == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert ht.arg(fetch, "--dest") == ht.arg(c, "--model")  # downloads where the worker reads
    assert ht.env(fetch, "HF_TOKEN")["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "tok"}
    claim = {v["name"]: v for v in tmpl["spec"]["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
    pvc = ht.one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The worker reads the cache read-only; only the init container writes.
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}["/models"] is True
    # A pre-populated path: no download, and an existing claim is used as is.
    docs = ht.render({"modelCache": {"pvc": {"existingClaim": "weights"}},
                      "workerGroups": [{"name": "m", "modelName": "m", "model": {"path": "mistral/v3"}}]})
    (_, _, tmpl, c), = workers(docs)
    assert "initContainers" not in tmpl["spec"]
    assert ht.arg(c, "--model") == "/models/mistral/v3"
    assert not ht.of_kind(docs, "PersistentVolumeClaim")
    assert {v["name"]: v for v in tmpl["spec"]["volumes"]}["models"]["persistentVolumeClaim"]["claimName"] == "weights"


def test_readiness_waits_for_model_and_redis():
    (_, _, _, c), = workers(ht.render())
    port = int(ht.arg(c, "--metrics-port"))
    assert ht.arg(c, "--metrics-addr") == "0.0.0.0"  # the worker binds 127.0.0.1 by default; probes use the pod IP
    assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/metrics"  # a Redis outage must not restart workers


def test_several_groups_one_gateway():
    docs = ht.render({"workerGroups": [
        {"name": "a", "modelName": "model-a", "model": {"path": "a"}},
        {"name": "b", "modelName": "model-b", "model": {"path": "b"}, "tp": 2, "nodes": 2}]})
    assert ht.arg(gateway(docs), "--models") == "model-a,model-b"
    streams = {so["metadata"]["name"]: so["spec"]["triggers"][0]["metadata"]["stream"]
               for so in ht.of_kind(docs, "ScaledObject")}
    assert streams == {f"{ht.RELEASE}-llmq-a": "llmq:req:model-a", f"{ht.RELEASE}-llmq-b": "llmq:req:model-b"}
    assert {d["kind"] for d in ht.of_kind(docs, "LeaderWorkerSet")} == {"LeaderWorkerSet"}
