"""The chart renders only what can run (issue 22, "Helm chart"):
KEDA objects only where the cluster serves KEDA's API, the CPU group on the
CPU image, a gateway that keeps serving while its endpoint goes away, the
bundled Redis's password off its command line, a rediss:// Redis through a
TLS proxy (tests/e2e/test_redis_tls.py runs that proxy for real), and only
the Route TLS mode the gateway can serve."""
import os
import re
import shutil
import socket
import subprocess
import time

import pytest
import redis
import yaml

import helmtest as ht
from llmqtest import ROOT, free_port

APP_VERSION = yaml.safe_load((ht.CHART / "Chart.yaml").read_text())["appVersion"]
BARE = ()  # a cluster without any operator's API


def worker_deployment(docs):
    return next(d for d in ht.of_kind(docs, "Deployment") if d["metadata"]["name"] != "demo-llmq-gateway")


def by_name(containers, name):
    return next(c for c in containers if c["name"] == name)


# ------------------------------------------------------------ KEDA

def test_keda_objects_only_where_the_api_exists():
    bare = ht.render(apis=BARE)
    assert not ht.of_kind(bare, "ScaledObject") and not ht.of_kind(bare, "TriggerAuthentication")
    # Nobody else scales the group: it gets its fixed replicas.
    assert worker_deployment(bare)["spec"]["replicas"] == 1
    # The Redis NetworkPolicy lets no KEDA namespace in.
    peers = ht.one(bare, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert not [p for p in peers if "namespaceSelector" in p]
    note = ht.notes(apis=BARE)
    assert "keda.sh/v1alpha1" in note and "Autoscaling: OFF" in note and "--api-versions" in note

    full = ht.render(apis=("keda.sh/v1alpha1",))
    assert ht.of_kind(full, "ScaledObject") and ht.of_kind(full, "TriggerAuthentication")
    assert "replicas" not in worker_deployment(full)["spec"]
    assert "Autoscaling: OFF" not in ht.notes(apis=("keda.sh/v1alpha1",))
    # keda.enabled false says nothing about KEDA.
    assert "KEDA" not in ht.notes({"keda": {"enabled": False}}, apis=BARE)


# ------------------------------------------------------------ images

def test_cpu_groups_run_the_cpu_image_the_readme_builds():
    # The chart README's build commands name the images; the chart must pull those.
    readme = (ht.CHART / "README.md").read_text()
    cpu_tag = re.search(r"IMAGE_CUDA=0 -t REGISTRY/llmq/worker:(\S+)", readme).group(1)
    cuda_tag = re.search(r"worker\.Dockerfile +-t REGISTRY/llmq/worker:(\S+)", readme).group(1)
    assert cpu_tag == f"{APP_VERSION}-cpu" and cuda_tag == APP_VERSION

    def images(docs):
        spec = worker_deployment(docs)["spec"]["template"]["spec"]
        return {c["name"]: c["image"] for c in ht.containers(spec)}

    assert images(ht.render()) == {"fetch-model": f"llmq/worker:{cpu_tag}", "worker": f"llmq/worker:{cpu_tag}"}
    assert set(images(ht.render(ht.values("mistral-7b-2xT4"))).values()) == {f"llmq/worker:{cuda_tag}"}
    # A tag written in the values is used as written; the registry still applies.
    docs = ht.render({"imageRegistry": "reg.example.com/", "workerDefaults": {"image": {"tag": "custom"}}})
    assert set(images(docs).values()) == {"reg.example.com/llmq/worker:custom"}


# ------------------------------------------------------------ gateway preStop

def test_gateway_serves_on_while_its_endpoint_is_removed():
    spec = ht.one(ht.render(), "Deployment", "demo-llmq-gateway")["spec"]["template"]["spec"]
    c = by_name(spec["containers"], "gateway")
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep" and int(cmd[1]) >= 5
    # Kubernetes waits for the preStop, then the drain, before SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > int(cmd[1]) + int(ht.arg(c, "--drain-timeout"))
    c = by_name(ht.one(ht.render({"gateway": {"preStopSleepSeconds": 0}}), "Deployment",
                       "demo-llmq-gateway")["spec"]["template"]["spec"]["containers"], "gateway")
    assert "lifecycle" not in c


# ------------------------------------------------------------ Redis password

def test_redis_password_is_in_a_file_not_on_the_command_line(tmp_path):
    """Run the rendered init script and redis-server's rendered arguments for
    real, with a password full of characters that need quoting."""
    spec = ht.one(ht.render(), "StatefulSet")["spec"]["template"]["spec"]
    for c in ht.containers(spec):
        # $(VAR) in command/args is expanded by the kubelet into the argv.
        argv = c.get("command", []) + c.get("args", [])
        assert not [a for a in argv if re.search(r"\$\(\w+\)", a) or a == "--requirepass"], c["name"]
    init = by_name(spec["initContainers"], "auth-config")
    assert ht.env(init, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] == "demo-llmq-redis"
    main = by_name(spec["containers"], "redis")
    assert ht.env(main, "LLMQ_REDIS_PASSWORD") is None

    password = 'a"b\\c $HOME `x` \'q\' #x'
    mount = tmp_path / "auth"
    mount.mkdir()
    script = init["command"][2].replace("/run/redis-auth", str(mount))
    subprocess.run(init["command"][:2] + [script], check=True, env={"LLMQ_REDIS_PASSWORD": password, "PATH": os.environ["PATH"]})
    assert oct((mount / "auth.conf").stat().st_mode & 0o777) == "0o600"

    args = [a.replace("/run/redis-auth", str(mount)) for a in main["args"]]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(tmp_path)
    proc = subprocess.Popen([shutil.which("redis-server"), *args, "--bind", "127.0.0.1", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)
        assert redis.Redis(port=port, password=password).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):  # no retries: they sleep
            redis.Redis(port=port, password="wrong", retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)).ping()
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read()
        assert password.encode() not in cmdline and b"a\"b" not in cmdline
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------ Redis over TLS

EXTERNAL_TLS = {"redis": {"enabled": False, "external": {
    "url": "rediss://redis.example.com:6380/2", "existingSecret": "ext", "secretKey": "pw",
    "tls": {"caSecret": "redis-ca", "clientSecret": "redis-client"}}}}


def test_rediss_goes_through_a_tls_proxy_in_every_pod():
    docs = ht.render(EXTERNAL_TLS)
    assert not [p for d in docs for p in ht.validate(d)]
    conf = ht.one(docs, "ConfigMap", "demo-llmq-redis-tls")["data"]["stunnel.conf"]
    settings = dict(re.findall(r"^(\w+) = (.*)$", conf, re.M))
    assert settings["client"] == "yes" and settings["accept"] == "127.0.0.1:6380"
    assert settings["connect"] == "redis.example.com:6380"
    assert settings["verifyChain"] == "yes" and settings["checkHost"] == "redis.example.com"
    pods = [t for _, _, t in ht.pod_templates(docs) if t["spec"]["containers"][0]["name"] in ("gateway", "worker")]
    assert len(pods) == 2
    for tmpl in pods:
        spec = tmpl["spec"]
        main, proxy = spec["containers"][0], by_name(spec["containers"], "redis-tls-proxy")
        # The binaries speak plain Redis to the proxy; the password still comes from the Secret.
        assert ht.arg(main, "--redis") == "redis://127.0.0.1:6380/2"
        assert ht.env(main, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"] == {"name": "ext", "key": "pw"}
        assert proxy["image"] == main["image"] and proxy["command"][0] == "stunnel"
        mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["redis-tls-ca"]["secret"]["secretName"] == "redis-ca"
        assert settings["CAfile"] == f"{mounts['redis-tls-ca']}/ca.crt"
        assert vols["redis-tls-client"]["secret"]["secretName"] == "redis-client"
        assert settings["cert"] == f"{mounts['redis-tls-client']}/tls.crt"
        assert settings["key"] == f"{mounts['redis-tls-client']}/tls.key"
        assert vols["redis-tls-config"]["configMap"]["name"] == "demo-llmq-redis-tls"
        assert mounts["redis-tls-config"] + "/stunnel.conf" == proxy["command"][1]
        # It outlives the main container's drain (tests/e2e/test_redis_tls.py runs it).
        assert "0100007F:18EC" in proxy["lifecycle"]["preStop"]["exec"]["command"][2]  # 127.0.0.1:6380
    # KEDA reaches Redis itself, over TLS, with the same CA and client certificate.
    for t in ht.one(docs, "ScaledObject")["spec"]["triggers"]:
        assert t["metadata"]["address"] == "redis.example.com:6380" and t["metadata"]["enableTLS"] == "true"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in ht.one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]}
    assert refs == {"password": ("ext", "pw"), "ca": ("redis-ca", "ca.crt"),
                    "cert": ("redis-client", "tls.crt"), "key": ("redis-client", "tls.key")}


def test_rediss_with_public_cas_and_no_password():
    docs = ht.render({"redis": {"enabled": False, "external": {"url": "rediss://r.example.com"}}})
    conf = ht.one(docs, "ConfigMap", "demo-llmq-redis-tls")["data"]["stunnel.conf"]
    assert "CAfile = /etc/ssl/certs/ca-certificates.crt" in conf and "cert =" not in conf
    assert "connect = r.example.com:6379" in conf
    assert not ht.of_kind(docs, "TriggerAuthentication")
    # A server given by IP address: the certificate must name that IP (no SNI).
    docs = ht.render({"redis": {"enabled": False, "external": {"url": "rediss://10.1.2.3:6378/0"}}})
    conf = ht.one(docs, "ConfigMap", "demo-llmq-redis-tls")["data"]["stunnel.conf"]
    assert "checkIP = 10.1.2.3" in conf and "checkHost" not in conf and "sni" not in conf
    # Plain redis:// has no proxy.
    docs = ht.render({"redis": {"enabled": False, "external": {"url": "redis://r:6379/0"}}})
    assert not ht.of_kind(docs, "ConfigMap")
    assert all(c["name"] != "redis-tls-proxy" for _, _, t in ht.pod_templates(docs) for c in t["spec"]["containers"])


# ------------------------------------------------------------ OpenShift Route TLS

@pytest.mark.parametrize("mode", ["passthrough", "reencrypt"])
def test_route_tls_modes_the_gateway_cannot_serve_are_refused(mode):
    err = ht.render_error({"openshift": {"enabled": True, "route": {"tls": mode}}})
    assert err and "/openshift/route/tls" in err


def test_route_edge_tls_renders():
    route = ht.one(ht.render({"openshift": {"enabled": True, "route": {"tls": "edge"}}}), "Route")
    assert route["spec"]["tls"]["termination"] == "edge"


def test_a_new_tls_configuration_rolls_the_pods():
    def stamps(url):
        docs = ht.render({"redis": {"enabled": False, "external": {"url": url}}})
        return {(t["metadata"].get("annotations") or {}).get("llmq.io/redis-tls-config")
                for _, _, t in ht.pod_templates(docs) if t["spec"]["containers"][0]["name"] in ("gateway", "worker")}
    a, b = stamps("rediss://a.example.com:6380/0"), stamps("rediss://b.example.com:6380/0")
    assert len(a) == 1 and len(b) == 1 and None not in a | b and a != b
    assert stamps("redis://a.example.com:6379/0") == {None}


def test_the_images_the_proxy_runs_from_carry_stunnel():
    """The proxy runs the pod's own image: each Dockerfile's last (runtime)
    stage installs stunnel4 (and bash, grep for its preStop: in the base)."""
    for name in ("gateway", "worker"):
        text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
        runtime = text[text.rindex("\nFROM "):]
        assert re.search(r"apt-get install[^&]*\bstunnel4\b", runtime, re.S), name
