"""redis.instances (issue 25, docs/operations.md "Several Redis instances"):
models on Redis instances of their own.  The gateway gets one --redis-for per
instance, each listed model's worker group points at its instance, and its
KEDA triggers read its own instance (address and db from the URL, with the
main Redis's password); every other group stays on the main Redis.  The
rendered gateway flags are accepted by the real llmq-gateway."""
import subprocess

import pytest

import helmtest as ht
from llmqtest import BUILD

GROUPS = [{"name": "a", "modelName": "model-a", "model": {"path": "a"}},
          {"name": "b", "modelName": "model-b", "model": {"path": "b"}},
          {"name": "c", "modelName": "model-c", "model": {"path": "c"}}]
VALS = {"workerGroups": GROUPS,
        "redis": {"instances": [{"name": "two", "url": "redis://redis-two.data:6390/3", "models": ["model-b"]},
                                {"name": "three", "url": "redis://redis-three.data", "models": ["model-c"]}]}}
MAIN = f"redis://{ht.RELEASE}-llmq-redis.{ht.NAMESPACE}.svc:6379/0"


def worker_redis(docs):
    """model name -> the --redis of its worker pods."""
    out = {}
    for _, _, tmpl in ht.pod_templates(docs):
        if tmpl["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
            c = tmpl["spec"]["containers"][0]
            out[ht.arg(c, "--model-name")] = ht.arg(c, "--redis")
    return out


def gateway_args(docs):
    return ht.one(docs, "Deployment", f"{ht.RELEASE}-llmq-gateway")["spec"]["template"]["spec"]["containers"][0][
        "args"]


def test_gateway_routes_workers_point_and_keda_reads_each_instance():
    docs = ht.render(VALS)
    for d in docs:
        ht.validate(d)
    args = gateway_args(docs)
    assert args[args.index("--redis") + 1] == MAIN
    fors = [args[i + 1] for i, a in enumerate(args) if a == "--redis-for"]
    assert fors == ["model-b=redis://redis-two.data:6390/3", "model-c=redis://redis-three.data"]
    assert worker_redis(docs) == {"model-a": MAIN, "model-b": "redis://redis-two.data:6390/3",
                                  "model-c": "redis://redis-three.data"}
    want = {"a": (f"{ht.RELEASE}-llmq-redis.{ht.NAMESPACE}.svc:6379", "0"), "b": ("redis-two.data:6390", "3"),
            "c": ("redis-three.data:6379", "0")}
    sos = ht.of_kind(docs, "ScaledObject")
    assert len(sos) == 3
    for so in sos:
        group = so["metadata"]["name"].rsplit("-", 1)[1]
        for t in so["spec"]["triggers"]:
            assert t["type"] == "redis-streams"
            assert (t["metadata"]["address"], t["metadata"]["databaseIndex"]) == want[group], (group, t)
            assert t["metadata"]["stream"].startswith(f"llmq:req:model-{group}")
            assert t["metadata"]["enableTLS"] == "false"
            assert t["authenticationRef"]["name"] == f"{ht.RELEASE}-llmq-redis"  # the main Redis's password


def test_no_instances_renders_as_before():
    docs = ht.render({"workerGroups": GROUPS})
    assert "--redis-for" not in gateway_args(docs)
    assert set(worker_redis(docs).values()) == {MAIN}


def test_bad_instances_are_refused():
    def bad(instances):
        return ht.render_error({"workerGroups": GROUPS, "redis": {"instances": instances}})
    assert "two instances" in bad([{"name": "x", "url": "redis://x", "models": ["model-b"]},
                                   {"name": "y", "url": "redis://y", "models": ["model-b"]}])
    assert "used twice" in bad([{"name": "x", "url": "redis://x", "models": ["model-b"]},
                                {"name": "x", "url": "redis://y", "models": ["model-c"]}])
    # the schema: a password in the URL, TLS, no models
    assert bad([{"name": "x", "url": "redis://:pw@x:6379/0", "models": ["model-b"]}])
    assert bad([{"name": "x", "url": "rediss://x:6379/0", "models": ["model-b"]}])
    assert bad([{"name": "x", "url": "redis://x", "models": []}])


def test_the_gateway_accepts_the_rendered_flags(tmp_path):
    exe = BUILD / "llmq-gateway"
    if not exe.exists():
        pytest.skip(f"{exe} is not built")
    args = gateway_args(ht.render(VALS))
    # the same flags, Redis nowhere: it starts, names each instance with its tag, and stops on SIGTERM
    fors = [a for i, a in enumerate(args) if i and args[i - 1] == "--redis-for"]
    p = subprocess.Popen([str(exe), "--redis", "redis://127.0.0.1:1/0", *sum((["--redis-for", f] for f in fors), []),
                          "--listen", "127.0.0.1:0", "--allow-root"], stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        for line in p.stderr:
            err += line
            if err.count("redis instance r") == 2:
                break
        assert "carries model-b" in err and "carries model-c" in err, err
    finally:
        p.terminate()
        p.wait(10)
