"""helm/llmq renders with Helm's engine, passes `helm lint --strict`, and
every object it renders, in every supported configuration, is valid for
Kubernetes (1.27 and 1.33 schemas, strict) and for the KEDA and
LeaderWorkerSet CRDs."""
import json
import subprocess

import pytest

import helmtest as ht
from llmqtest import BUILD

LWS = {"workerGroups": [{
    "name": "big", "modelName": "big-model", "backend": "cuda", "tp": 4, "nodes": 2,
    "model": {"path": "prepared/big", "numAttentionHeads": 32}}]}

# The configurations the chart supports, each as the values a user passes.
SCENARIOS = {
    "defaults": [],
    "mistral-7b-2xT4": ["mistral-7b-2xT4"],
    "llama3-8b-2xT4": ["llama3-8b-2xT4"],
    "falcon-40b-8xA10G": ["falcon-40b-8xA10G"],
    "falcon-40b-2x4xA10G-lws": ["falcon-40b-2x4xA10G-lws"],
    "mixtral-8x7b-8xA10G": ["mixtral-8x7b-8xA10G"],
    "lws": [LWS],
    "openshift": ["mistral-7b-2xT4", {
        "openshift": {"enabled": True, "route": {"host": "llmq.apps.example.com"}},
        "keda": {"namespace": "openshift-keda"},
        "gateway": {"apiKeys": {"existingSecret": "llmq-api-keys"}},
        "modelCache": {"huggingFace": {"tokenSecret": "hf-token"}}}],
    "openshift-lws": ["falcon-40b-2x4xA10G-lws", {"openshift": {"enabled": True}}],
    "external-redis": [{"redis": {"enabled": False, "external": {
        "url": "rediss://redis.example.com:6380/2", "existingSecret": "ext-redis"}}}],
    "scale-to-zero": [{"workerDefaults": {"autoscaling": {"minReplicas": 0}}}],
    "no-keda": [{"keda": {"enabled": False}, "workerDefaults": {"replicas": 3}}],
    "ingress-monitoring": [{"gateway": {"ingress": {"enabled": True, "className": "nginx",
                                                    "tlsSecretName": "llmq-tls"}},
                            "serviceMonitor": {"enabled": True},
                            "modelCache": {"type": "emptyDir"}}],
}


def scenario(name):
    return ht.values(*SCENARIOS[name])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_strict_is_clean(name):
    report = ht.lint(scenario(name))
    bad = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not bad and not report["errors"], bad or report["errors"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_object_is_valid(name):
    docs = ht.render(scenario(name))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    problems = [p for d in docs for p in ht.validate(d)]
    assert not problems, "\n".join(problems)


def test_crds_are_checked(shared_dir):
    """The CRD validation is real: it rejects a misspelt or mistyped field."""
    docs = ht.render(scenario("falcon-40b-2x4xA10G-lws"))
    so = ht.one(docs, "ScaledObject")
    so["spec"]["minReplicaCount"] = "zero"
    assert ht.validate(so)
    so = ht.one(docs, "ScaledObject")
    so["spec"]["cooldownPeriods"] = 10
    assert ht.validate(so)
    lws = ht.one(docs, "LeaderWorkerSet")
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert ht.validate(lws)
    ta = ht.one(docs, "TriggerAuthentication")
    ta["spec"]["secretTargetRef"][0].pop("key")
    assert ht.validate(ta)


def test_kubernetes_schemas_are_checked():
    docs = ht.render()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    assert ht.validate(dep)


def test_each_preset_serves_its_model():
    expect = {
        "mistral-7b-2xT4": ("mistralai/Mistral-7B-Instruct-v0.3", 2, 1),
        "llama3-8b-2xT4": ("meta-llama/Meta-Llama-3-8B-Instruct", 2, 1),
        "falcon-40b-8xA10G": ("tiiuae/falcon-40b-instruct", 8, 1),
        "falcon-40b-2x4xA10G-lws": ("tiiuae/falcon-40b-instruct", 8, 2),
        "mixtral-8x7b-8xA10G": ("mistralai/Mixtral-8x7B-Instruct-v0.1", 8, 1),
    }
    assert {p.stem for p in ht.PRESETS.glob("*.yaml")} == set(expect)
    for name, (repo, tp, nodes) in expect.items():
        docs = ht.render(scenario(name))
        kind = "LeaderWorkerSet" if nodes > 1 else "Deployment"
        workload = [d for d in ht.of_kind(docs, kind) if "worker" in str(d["metadata"]["labels"])]
        assert len(workload) == 1, name
        _, _, tmpl = ht.pod_templates([workload[0]])[0]
        fetch = tmpl["spec"]["initContainers"][0]
        assert ht.arg(fetch, "--repo") == repo
        worker = tmpl["spec"]["containers"][0]
        assert ht.arg(worker, "--tp") == str(tp) and ht.arg(worker, "--backend") == "cuda"
        assert tmpl["spec"]["nodeSelector"]["nvidia.com/gpu.product"] in ("Tesla-T4", "NVIDIA-A10G")


def test_falcon_presets_describe_engine_support():
    for name in ("falcon-40b-8xA10G", "falcon-40b-2x4xA10G-lws"):
        text = (ht.PRESETS / f"{name}.yaml").read_text()
        assert "FalconForCausalLM" in text and "PENDING" not in text


def test_mixtral_preset_describes_engine_support():
    text = (ht.PRESETS / "mixtral-8x7b-8xA10G.yaml").read_text()
    assert "MixtralForCausalLM" in text and "PENDING" not in text


# Each preset's model as a tools/presets config, its GPU as `llmq vram` names
# it, and the FP16 weight bytes its checkpoint has beyond that config: the
# Mistral preset serves v0.3, whose vocabulary is 768 rows (embedding and
# lm_head of width 4096) larger than the v0.2 config in tools/presets.
ESTIMATOR = {
    "mistral-7b-2xT4": ("mistral-7b", "T4", 2 * 768 * 4096 * 2),
    "llama3-8b-2xT4": ("llama3-8b", "T4", 0),
    "falcon-40b-8xA10G": ("falcon-40b", "A10G", 0),
    "falcon-40b-2x4xA10G-lws": ("falcon-40b", "A10G", 0),
    "mixtral-8x7b-8xA10G": ("mixtral-8x7b", "A10G", 0),
}


@pytest.mark.parametrize("name", sorted(ESTIMATOR))
def test_preset_kv_blocks_fit_the_estimator(name):
    """The memory estimator (llmq vram) leaves room for the preset's kvBlocks
    on its GPUs, at its tp, step size and sequences, in FP16."""
    assert {p.stem for p in ht.PRESETS.glob("*.yaml")} == set(ESTIMATOR)
    g = ht.preset(name)["workerGroups"][0]
    model, gpu, extra = ESTIMATOR[name]
    product = {"T4": "Tesla-T4", "A10G": "NVIDIA-A10G"}[gpu]
    assert g["nodeSelector"]["nvidia.com/gpu.product"] == product
    r = subprocess.run([str(BUILD / "llmq"), "vram", "--model", model, "--gpu", gpu, "--tp", str(g["tp"]),
                        "--dtype", "fp16", "--max-num-seqs", str(g["maxNumSeqs"]),
                        "--max-batched-tokens", str(g["maxBatchedTokens"]), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    block = 16 * est["kv_bytes_per_token_per_gpu"]
    room = est["kv_blocks"] - -(-extra // g["tp"] // block)  # the extra weights' blocks, rounded up
    assert 0 < g["kvBlocks"] <= room, (g["kvBlocks"], room)


def test_notes_name_streams_and_warn_without_api_keys():
    text = ht.notes()
    assert "llmq:req:qwen2.5-0.5b-instruct" in text
    assert "WARNING" in text
    assert "WARNING" not in ht.notes({"gateway": {"apiKeys": {"existingSecret": "k"}}})
