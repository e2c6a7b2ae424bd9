"""helm/llmq under OpenShift's restricted-v2 SCC and the Kubernetes
"restricted" Pod Security Standard; secrets referenced, never inlined;
Redis reachable only from llmq and KEDA; disruption budgets; Route vs Ingress."""
import base64
import json

import pytest

import helmtest as ht

CONFIGS = {
    "defaults": {},
    "mistral": ht.values("mistral-7b-2xT4"),
    "lws": ht.values("falcon-40b-2x4xA10G-lws"),
    "openshift": ht.values("mistral-7b-2xT4", {"openshift": {"enabled": True}}),
    "openshift-lws": ht.values("falcon-40b-2x4xA10G-lws", {"openshift": {"enabled": True}}),
}
SECRETS = {"gateway": {"apiKeys": {"existingSecret": "api-keys"}},
           "modelCache": {"huggingFace": {"tokenSecret": "hf-token"}}}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_restricted_security_contexts(name):
    docs = ht.render(CONFIGS[name])
    templates = ht.pod_templates(docs)
    assert len(templates) >= 3
    for obj, role, tmpl in templates:
        where = f"{obj['kind']}/{obj['metadata']['name']} ({role})"
        spec = tmpl["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        assert spec["automountServiceAccountToken"] is False, where
        for c in ht.containers(spec):
            sc = c["securityContext"]
            cw = f"{where} container {c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, cw
            assert sc["capabilities"] == {"drop": ["ALL"]}, cw
            assert sc.get("privileged") is not True, cw
            assert sc["runAsNonRoot"] is True, cw
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, cw
            # A read-only root: whatever a container writes goes to a volume.
            assert sc["readOnlyRootFilesystem"] is True, cw
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, cw
            assert not any(p.get("hostPort") for p in c.get("ports", [])), cw
        ids = {k for k in ("runAsUser", "runAsGroup", "fsGroup") if k in psc}
        ids |= {k for c in ht.containers(spec) for k in ("runAsUser", "runAsGroup") if k in c["securityContext"]}
        if name.startswith("openshift"):
            # restricted-v2 assigns UID/GID/fsGroup from the project's range.
            assert not ids, where
        else:
            assert psc["runAsUser"] > 0 and psc["fsGroup"] > 0, where


def test_writable_volumes_are_emptydir_or_claims():
    docs = ht.render(ht.values(CONFIGS["lws"], SECRETS))
    for obj, role, tmpl in ht.pod_templates(docs):
        for v in tmpl["spec"]["volumes"]:
            kinds = set(v) - {"name"}
            assert kinds <= {"emptyDir", "persistentVolumeClaim", "secret"}, (obj["metadata"]["name"], v)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_secrets_are_referenced_never_inlined(name):
    docs = ht.render(ht.values(CONFIGS[name], SECRETS))
    generated = [base64.b64decode(v).decode()
                 for s in ht.of_kind(docs, "Secret") for v in s.get("data", {}).values()]
    assert generated  # the bundled Redis password
    others = json.dumps([d for d in docs if d["kind"] != "Secret"])
    for value in generated:
        assert value not in others
    for obj, role, tmpl in ht.pod_templates(docs):
        for c in ht.containers(tmpl["spec"]):
            for e in c.get("env", []):
                if any(w in e["name"] for w in ("PASSWORD", "TOKEN", "AUTH", "KEY")):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (c["name"], e)
            for a in c.get("args", []):
                if a.startswith("redis"):
                    assert "@" not in a and "PASSWORD" not in a, a  # credentials come from the env
    gw = ht.one(docs, "Deployment", f"{ht.RELEASE}-llmq-gateway")["spec"]["template"]["spec"]
    keys = next(v for v in gw["volumes"] if v["name"] == "api-keys")["secret"]
    assert keys["secretName"] == "api-keys"
    c = gw["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
    assert ht.arg(c, "--api-key-file").startswith(mount["mountPath"] + "/") and mount["readOnly"]


def test_existing_redis_secret_is_not_generated():
    docs = ht.render({"redis": {"auth": {"existingSecret": "my-redis", "secretKey": "pw"}}})
    assert not ht.of_kind(docs, "Secret")
    spec = ht.one(docs, "StatefulSet")["spec"]["template"]["spec"]
    init = spec["initContainers"][0]  # writes redis-server's requirepass file
    assert ht.env(init, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    assert ht.env(spec["containers"][0], "REDISCLI_AUTH")["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    assert ht.one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"][0]["name"] == "my-redis"


def test_bundled_redis():
    docs = ht.render()
    sts = ht.one(docs, "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    major = int(c["image"].rsplit(":", 1)[1].split(".")[0])
    assert major >= 7  # KEDA's lag trigger reads XINFO GROUPS' lag (Redis 7+)
    args = c["args"]
    assert ht.arg(c, "--appendonly") == "yes"
    assert ht.arg(c, "--maxmemory-policy") == "noeviction"
    # The password comes from a file (test_helm_day_one.py), first argument.
    assert c["args"][0] == "/run/redis-auth/auth.conf" and "--requirepass" not in args
    assert ht.arg(c, "--dir") == "/data" and "--appendfsync" in args
    claim, = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"mountPath": "/data", "name": "data"} in c["volumeMounts"]
    svc = ht.one(docs, "Service", f"{ht.RELEASE}-llmq-redis")
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_redis_network_policy():
    docs = ht.render()
    np = ht.one(docs, "NetworkPolicy")
    redis_labels = ht.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rule, = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    allowed = {}
    for peer in rule["from"]:
        if "podSelector" in peer:
            allowed[peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]] = peer
        else:
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert set(allowed) == {"gateway", "worker"}
    # Each peer selects exactly the pods that need Redis.
    for obj, role, tmpl in ht.pod_templates(docs):
        labels = tmpl["metadata"]["labels"]
        comp = labels["app.kubernetes.io/component"]
        matches = [c for c, peer in allowed.items() if peer["podSelector"]["matchLabels"].items() <= labels.items()]
        assert matches == ([comp] if comp in allowed else []), obj["metadata"]["name"]
    # OpenShift's Custom Metrics Autoscaler lives elsewhere.
    np = ht.one(ht.render({"keda": {"namespace": "openshift-keda"}}), "NetworkPolicy")
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-keda"}}} in np["spec"]["ingress"][0]["from"]


def test_disruption_budgets_select_their_pods():
    docs = ht.render(ht.values("mistral-7b-2xT4"))
    pdbs = {p["metadata"]["name"]: p for p in ht.of_kind(docs, "PodDisruptionBudget")}
    gw = pdbs[f"{ht.RELEASE}-llmq-gateway"]["spec"]
    assert gw["minAvailable"] == 1
    gw_dep = ht.one(docs, "Deployment", f"{ht.RELEASE}-llmq-gateway")
    assert gw_dep["spec"]["replicas"] > gw["minAvailable"]  # a drain can proceed
    for obj, role, tmpl in ht.pod_templates(docs):
        labels = tmpl["metadata"]["labels"]
        selecting = [n for n, p in pdbs.items() if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if labels["app.kubernetes.io/component"] in ("gateway", "worker"):
            assert selecting == [obj["metadata"]["name"]]
    worker = pdbs[f"{ht.RELEASE}-llmq-mistral-7b"]["spec"]
    assert worker["maxUnavailable"] == 1 and "minAvailable" not in worker  # never blocks scale-to-zero


def test_openshift_route_instead_of_ingress():
    plain = ht.render({"gateway": {"ingress": {"enabled": True, "host": "llm.example.com",
                                               "tlsSecretName": "tls"}}})
    assert not ht.of_kind(plain, "Route")
    ing = ht.one(plain, "Ingress")
    rule, = ing["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    svc = ht.one(plain, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ing["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "tls"}]

    osh = ht.render({"openshift": {"enabled": True, "route": {"host": "llm.apps.example.com"}},
                     "gateway": {"ingress": {"enabled": True}}})
    assert not ht.of_kind(osh, "Ingress")
    route = ht.one(osh, "Route")
    assert route["apiVersion"] == "route.openshift.io/v1"
    spec = route["spec"]
    assert spec["host"] == "llm.apps.example.com"
    assert spec["to"] == {"kind": "Service", "name": f"{ht.RELEASE}-llmq-gateway", "weight": 100}
    assert spec["port"]["targetPort"] == "http"
    assert spec["tls"] == {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"}
    # SSE streams outlive the router's 30 s default.
    assert route["metadata"]["annotations"]["haproxy.router.openshift.io/timeout"] == "600s"


def test_service_monitors():
    docs = ht.render({"serviceMonitor": {"enabled": True}})
    mons = {m["metadata"]["name"]: m for m in ht.of_kind(docs, "ServiceMonitor")}
    assert set(mons) == {f"{ht.RELEASE}-llmq-gateway", f"{ht.RELEASE}-llmq-workers"}
    for m in mons.values():
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        sel = m["spec"]["selector"]["matchLabels"]
        svcs = [s for s in ht.of_kind(docs, "Service") if sel.items() <= s["metadata"]["labels"].items()]
        assert svcs, m["metadata"]["name"]
        for s in svcs:
            ep, = m["spec"]["endpoints"]
            assert ep["path"] == "/metrics"
            assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}
    assert not ht.of_kind(ht.render(), "ServiceMonitor")
