"""redis.external.sentinel (issue 23): the chart points the fleet at an
external Redis Sentinel set.  The pods get a redis-sentinel:// URL (the
format of docs/operations.md, "Redis Sentinel"), KEDA the
redis-sentinel-streams trigger with the same sentinels and master name."""
import helmtest as ht

SENTINEL = {"redis": {"enabled": False, "external": {
    "existingSecret": "ext-redis",
    "sentinel": {"hosts": ["s-0.sentinel:26379", "s-1.sentinel:26379", "s-2.sentinel:26380"],
                 "masterName": "llmq-primary", "db": 2}}}}
URL = "redis-sentinel://s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26380/llmq-primary/2"


def test_sentinel_url_and_keda_trigger():
    docs = ht.render(SENTINEL)
    assert not ht.of_kind(docs, "StatefulSet")  # no bundled Redis
    redis_args = []
    for _, _, pod in ht.pod_templates(docs):
        for c in ht.containers(pod["spec"]):
            if ht.arg(c, "--redis"):
                redis_args.append(ht.arg(c, "--redis"))
                assert ht.env(c, "LLMQ_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] == "ext-redis"
    assert len(redis_args) >= 2 and set(redis_args) == {URL}  # the gateway and every worker group
    triggers = [t for so in ht.of_kind(docs, "ScaledObject") for t in so["spec"]["triggers"]]
    assert triggers and all(t["type"] == "redis-sentinel-streams" for t in triggers)
    for t in triggers:
        assert t["metadata"]["addresses"] == "s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26380"
        assert t["metadata"]["sentinelMaster"] == "llmq-primary"
        assert t["metadata"]["databaseIndex"] == "2"
        assert "address" not in t["metadata"]
        assert t["authenticationRef"]["name"]


def test_external_needs_url_or_sentinel():
    assert ht.render_error({"redis": {"enabled": False}})
    assert ht.render_error({"redis": {"enabled": False, "external": {"sentinel": {"hosts": ["a:1"]}}}})
    assert ht.render_error({"redis": {"enabled": False, "external": {
        "sentinel": {"hosts": ["a:1/x"], "masterName": "m"}}}})
    # a plain external URL is unchanged
    docs = ht.render({"redis": {"enabled": False, "external": {"url": "redis://r.example:6379/1"}}})
    so = ht.of_kind(docs, "ScaledObject")[0]
    assert so["spec"]["triggers"][0]["type"] == "redis-streams"


def test_sentinel_wins_over_a_tls_url():
    vals = {"redis": {"enabled": False, "external": {"url": "rediss://r.example:6380/0",
                                                     "sentinel": SENTINEL["redis"]["external"]["sentinel"]}}}
    docs = ht.render(vals)
    assert not any(c["name"] == "redis-tls-proxy" for _, _, pod in ht.pod_templates(docs)
                   for c in ht.containers(pod["spec"]))
    assert URL in {ht.arg(c, "--redis") for _, _, pod in ht.pod_templates(docs) for c in ht.containers(pod["spec"])}
