"""The queue verbs of the `llmq` CLI (libllmq underneath): submit, get,
stream, cancel — against a real redis-server, the protocol test driver as
the worker, and the gateway reading what the CLI wrote."""
import json
import subprocess

import pytest
import redis

from fake_worker import wait_for
from gwtest import BUILD


def llmq(*args, timeout=30, check=True):
    exe = BUILD / "llmq"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run make first")
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"llmq {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def test_submit_then_get_and_stream(redis_server, worker):
    url = redis_server.url
    jid = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "hello there", "--max-tokens", "3",
               "--temperature", "0", "--seed", "42", "--force").stdout.strip()  # no worker yet
    assert len(jid) == 32
    r = redis.Redis.from_url(url)
    assert r.hget(f"llmq:job:{{{jid}}}", "state") == b"queued"
    assert r.xinfo_groups("llmq:req:m1")[0]["name"] == b"workers"  # created by the client itself
    j = json.loads(llmq("get", "--redis", url, jid).stdout)
    assert j["status"] == "queued" and j["text"] == ""
    w = worker()
    out = llmq("stream", "--redis", url, jid).stdout
    assert out == " t0 t1 t2\n"
    req = w.seen[-1]
    assert req["prompt"] == "hello there" and req["max_tokens"] == 3 and req["temperature"] == 0 and req["seed"] == 42
    j = json.loads(llmq("get", "--redis", url, jid).stdout)
    assert j["status"] == "done" and j["text"] == " t0 t1 t2" and j["finish_reason"] == "length"
    assert j["usage"] == {"prompt_tokens": 2, "completion_tokens": 3} and j["chunks"] == 4
    assert llmq("stream", "--redis", url, "--from", "2", jid).stdout == " t2\n"


def test_submit_wait_and_stream_flags(redis_server, worker):
    worker(delay=0.01)
    url = redis_server.url
    j = json.loads(llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--max-tokens", "2",
                        "--wait").stdout)
    assert j["status"] == "done" and j["text"] == " t0 t1"
    p = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--max-tokens", "4", "--stream")
    assert p.stdout == " t0 t1 t2 t3\n" and p.stderr.startswith("job ")


def test_cli_job_seen_by_gateway(gateway, redis_server, worker):
    worker()
    jid = llmq("submit", "--redis", redis_server.url, "--model", "m1", "--prompt", "x", "--max-tokens", "2",
               "--wait").stdout
    jid = json.loads(jid)["id"]
    st, j = gateway.json("GET", f"/v1/jobs/{jid}")
    assert st == 200 and j["text"] == " t0 t1"


def test_cancel(redis_server, worker):
    url = redis_server.url
    jid = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--force").stdout.strip()
    assert llmq("cancel", "--redis", url, jid).stdout.strip() == f"{jid} cancelled"
    assert json.loads(llmq("get", "--redis", url, jid).stdout)["status"] == "cancelled"
    assert llmq("stream", "--redis", url, jid).stdout == "\n"  # the final chunk, no text
    assert llmq("cancel", "--redis", url, jid).stdout.strip() == f"{jid} already finished"
    worker(delay=0.05)
    jid = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--max-tokens", "400").stdout.strip()
    r = redis.Redis.from_url(url)
    wait_for(lambda: r.xlen(f"llmq:job:{{{jid}}}:out") > 0)
    assert llmq("cancel", "--redis", url, jid).stdout.strip() == f"{jid} cancelling"
    wait_for(lambda: r.hget(f"llmq:job:{{{jid}}}", "state") == b"cancelled")


def test_errors(redis_server, worker):
    url = redis_server.url
    p = llmq("get", "--redis", url, "nope", check=False)
    assert p.returncode == 1 and "no job" in p.stderr
    p = llmq("stream", "--redis", url, "nope", check=False)
    assert p.returncode == 1 and "no job" in p.stderr
    p = llmq("cancel", "--redis", url, "nope", check=False)
    assert p.returncode == 1 and "not found" in p.stdout
    p = llmq("submit", "--redis", url, "--model", "m1", check=False)
    assert p.returncode == 2 and "usage" in p.stderr
    p = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--temperature", "9", check=False)
    assert p.returncode == 1 and "temperature" in p.stderr
    p = llmq("get", "--redis", "redis://127.0.0.1:1", "x", check=False)
    assert p.returncode == 1 and "cannot connect" in p.stderr
    p = llmq("get", "--redis", "http://x", "x", check=False)
    assert p.returncode == 1 and "redis://" in p.stderr
    worker()
    p = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "FAIL", "--stream", check=False)
    assert p.returncode == 1 and "asked to fail" in p.stderr
    p = llmq("stream", "--redis", url, "--timeout", "300", "never-written", check=False)
    assert p.returncode == 1


def test_submit_priority_picks_the_lane(redis_server):
    # docs/protocol.md "Lanes": priority > 0 goes to req:<model>#high, 0 to
    # req:<model>, < 0 to req:<model>#low
    url = redis_server.url
    r = redis.Redis.from_url(url)
    for prio, stream in ((5, "llmq:req:m1#high"), (0, "llmq:req:m1"), (-3, "llmq:req:m1#low"),
                         (2147483647, "llmq:req:m1#high")):
        jid = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--priority", str(prio),
                   "--force").stdout.strip()
        assert [e[1][b"id"] for e in r.xrange(stream)][-1] == jid.encode(), (prio, stream)
    assert [r.xlen(s) for s in ("llmq:req:m1#high", "llmq:req:m1", "llmq:req:m1#low")] == [2, 1, 1]
    for bad in ("2147483648", "-2147483649", "1.5", "", "high"):
        p = llmq("submit", "--redis", url, "--model", "m1", "--prompt", "x", "--priority", bad, "--force",
                 check=False)
        assert p.returncode == 2 and "--priority" in p.stderr and f"'{bad}'" in p.stderr, p.stderr
    assert sum(r.xlen(s) for s in ("llmq:req:m1#high", "llmq:req:m1", "llmq:req:m1#low")) == 4  # nothing more


def test_bad_value_names_its_option(redis_server):
    # it once said "bad value '0' for 0"; a count past int was taken modulo 2^32
    for args, value in ((["--max-tokens", "0"], "0"), (["--max-tokens=0"], "0"),
                        (["--max-tokens", "99999999999"], "99999999999"), (["--seed", "x"], "x")):
        p = llmq("submit", "--redis", redis_server.url, "--model", "m1", "--prompt", "x", "--force", *args,
                 check=False)
        assert p.returncode == 2 and f"bad value '{value}' for --{args[0][2:].split('=')[0]}" in p.stderr, p.stderr
    assert redis.Redis.from_url(redis_server.url).xlen("llmq:req:m1") == 0
