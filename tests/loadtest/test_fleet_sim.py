"""tools/fleet_sim.py, the fleet simulator (issue 25), in its short mode: real
redis-server, two synthetic llmq-workers, llmq-gateway and llmq-loadtest.
The report must account for every token asked, and its figures must be the
kind of numbers they claim to be (CPU per token from the counters, ops by
command, ITL against the synthetic step)."""
import json
import os
import subprocess
import sys

import pytest

from llmqtest import BUILD, ROOT, SHARED


def test_short_run_reports_sane_figures():
    if SHARED is None:
        pytest.skip("../shared (models) is not available")
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "fleet_sim.py"), "--build", str(BUILD), "--short",
                        "--json", "-"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LLMQ_ALLOW_ROOT": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert rep["machine"]["cores"] >= 1 and isinstance(rep["knee"], dict)
    # --short: 2 groups x 4 streams, 16 requests of 16 tokens at 100 tokens/s, via the gateway then straight in
    assert [p["via"] for p in rep["points"]] == ["gateway", "redis"]
    for pt in rep["points"]:
        check_point(pt)
    assert rep["points"][0]["gateway_us_per_token"] >= 0 and rep["points"][1]["gateway_us_per_token"] is None


def check_point(pt):
    assert (pt["groups"], pt["streams"], pt["rate"]) == (2, 4, 100.0)
    assert pt["requests"] == pt["completed"] == 16 and pt["failed"] == 0
    assert pt["tokens"] == pt["tokens_asked"] == 16 * 16 and pt["token_mismatches"] == 0
    assert 0 < pt["tok_s"] and pt["ideal_tok_s"] == 4 * 100.0
    # 256 tokens need at least 16 steps of 10 ms on each stream: the floor of the run's length
    assert pt["duration_s"] >= 16 * 0.010 * (16 / 4) * 0.99
    assert pt["redis_cpu_s"] > 0  # INFO cpu counts microseconds
    assert pt["redis_us_per_token"] == pytest.approx(pt["redis_cpu_s"] / 256 * 1e6, rel=0.05, abs=1)
    # /proc/<pid>/stat counts clock ticks (10 ms): a short run may see none
    assert pt["workers_us_per_token"] >= 0 and pt["client_us_per_token"] >= 0
    assert pt["redis_sys_us_per_token"] + pt["redis_user_us_per_token"] == pytest.approx(
        pt["redis_us_per_token"], abs=0.02)
    # every request went into a stream and every token out of one, through Redis
    assert pt["ops_per_s"].get("xadd", 0) * pt["wall_s"] >= 16
    assert pt["redis_ops_per_token"] > 0
    # where Redis's time goes (commandstats usec): every command that ran has its cost per call
    # and per token, most expensive first; the chunk script's time includes the XADDs it makes
    cu = pt["command_us"]
    assert set(cu) == set(pt["ops_per_s"])
    assert all(v["us_per_call"] >= 0 and v["us_per_token"] >= 0 for v in cu.values())
    assert [v["us_per_token"] for v in cu.values()] == sorted((v["us_per_token"] for v in cu.values()), reverse=True)
    script = sum(cu.get(c, {"us_per_token": 0})["us_per_token"] for c in ("eval", "evalsha"))
    assert cu["xadd"]["us_per_call"] > 0 and script >= cu["xadd"]["us_per_token"] * 0.5
    assert pt["step_ms"] == 10.0
    assert pt["itl_p50_ms"] > 0 and pt["itl_p99_ms"] >= pt["itl_p50_ms"]
    assert pt["added_itl_p50_ms"] == pytest.approx(pt["itl_p50_ms"] - 10.0, abs=0.01)


def test_two_redis_instances_split_the_same_fleet():
    """--redis-instances 2: two redis-servers, the load split over two models
    (one per instance, routed by the gateway's --redis-for), the same groups,
    streams and requests as one instance; each instance's CPU is counted
    against its own model's tokens."""
    if SHARED is None:
        pytest.skip("../shared (models) is not available")
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "fleet_sim.py"), "--build", str(BUILD), "--short",
                        "--redis-instances", "2", "--json", "-"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LLMQ_ALLOW_ROOT": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert [p["via"] for p in rep["points"]] == ["gateway", "redis"]
    for pt in rep["points"]:
        check_point(pt)
        assert pt["redis_instances"] == 2 and pt["models"] == 2
        inst = pt["per_instance"]
        assert [i["models"] for i in inst] == [["sim-0"], ["sim-1"]]
        assert [i["tokens"] for i in inst] == [128, 128]  # 8 requests of 16 tokens each
        assert all(i["redis_cpu_s"] > 0 for i in inst)  # both instances carried tokens
        assert sum(i["redis_cpu_s"] for i in inst) == pytest.approx(pt["redis_cpu_s"], abs=2e-4)
