"""llmq-gateway runs unprivileged: started as root (euid 0) it refuses with a
clear error unless --allow-root (or LLMQ_ALLOW_ROOT=1) is given; as any
other user it starts without a flag."""
import os
import subprocess

import pytest

from secutil import BUILD, Gateway, clean_env

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the refusal can only be seen when the tests run as root")


@as_root
def test_root_is_refused(redis_server):
    r = subprocess.run([str(BUILD / "llmq-gateway"), "--redis", redis_server.url, "--listen", "127.0.0.1:0"],
                       env=clean_env(LLMQ_ALLOW_ROOT=None), capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refusing to run as root" in r.stderr and "--allow-root" in r.stderr, r.stderr
    r = subprocess.run([str(BUILD / "llmq-gateway"), "--redis", redis_server.url, "--listen", "127.0.0.1:0"],
                       env=clean_env(LLMQ_ALLOW_ROOT="0"), capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "refusing to run as root" in r.stderr, r.stderr


@as_root
@pytest.mark.parametrize("how", ["flag", "env"])
def test_root_allowed_explicitly_warns(redis_server, tmp_path, how):
    env = clean_env(LLMQ_ALLOW_ROOT="1" if how == "env" else None)
    gw = Gateway(redis_server.url, ["--allow-root"] if how == "flag" else [], env, tmp_path / "gw.log")
    try:
        assert gw.request("GET", "/v1/models")[0] == 200
    finally:
        log = gw.term()
    assert "running as root" in log


def test_unprivileged_user_needs_no_flag(redis_server, tmp_path):
    """As a non-root user (nobody when the tests run as root) no flag is needed."""
    popen = {}
    if os.geteuid() == 0:
        popen = {"user": 65534, "group": 65534, "extra_groups": []}
        probe = subprocess.run([str(BUILD / "llmq-gateway"), "--help"], capture_output=True, timeout=10, **popen)
        if probe.returncode != 0:
            pytest.skip(f"user 65534 cannot run {BUILD / 'llmq-gateway'} (directory permissions)")
    log = tmp_path / "gw.log"
    from secutil import Proc, free_port
    port = free_port()
    p = Proc("llmq-gateway", ["--redis", redis_server.url, "--listen", f"127.0.0.1:{port}"],
             clean_env(LLMQ_ALLOW_ROOT=None), log, **popen)
    try:
        import http.client
        import time
        deadline = time.time() + 15
        st = None
        while time.time() < deadline and p.proc.poll() is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                st = c.getresponse().status
                c.close()
                break
            except OSError:
                time.sleep(0.05)
        assert st == 200, p.text()
    finally:
        text = p.term()
    assert "running as root" not in text and "refusing" not in text
