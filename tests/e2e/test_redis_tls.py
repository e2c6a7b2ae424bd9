"""A rediss:// Redis through the chart's TLS proxy, for real.

The chart gives llmq's binaries redis://127.0.0.1:6380 and runs stunnel
beside them with the configuration it renders (helm/llmq,
"llmq.redis.stunnelConf"). Here: a real redis-server with a password behind
a real stunnel server (TLS with a test CA made by openssl, client
certificates required), the stunnel client configured from the ConfigMap the
chart renders, and the real gateway and worker started with the Redis URL
the chart renders. A completion goes end to end through that path.

Only what a pod's mounts and a shared test machine force is rewritten in the
rendered text: the Secret mount paths become this test's files, and the
local port 6380 (fixed in the pod) becomes a free one.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from llmqtest import ROOT, RedisServer, free_port
from worker_util import Gateway, Worker

sys.path.insert(0, str(ROOT / "tests" / "helm"))
import helmtest as ht  # noqa: E402

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
pytestmark = pytest.mark.skipif(STUNNEL is None, reason="stunnel4 missing: run `make deps`")
PASSWORD = 'p@ss "w\\ord"'  # the proxy must carry AUTH untouched


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A test CA, a server certificate for localhost and a client certificate."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=llmq test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


def wait_port(port, proc, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


def start_stunnel(conf_text, path, port, log):
    path.write_text(conf_text)
    proc = subprocess.Popen([STUNNEL, str(path)], stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, f"stunnel {path.name}")
    return proc


def rendered(url, client_cert=True):
    """The chart's objects for an external rediss:// Redis."""
    tls = {"caSecret": "redis-ca"}
    if client_cert:
        tls["clientSecret"] = "redis-client"
    return ht.render({
        "redis": {"enabled": False, "external": {"url": url, "existingSecret": "redis-pw", "tls": tls}},
        "workerGroups": [{"name": "stories", "modelName": "stories", "model": {"path": "stories", "hfRepo": ""}}]})


def client_conf(docs, pki, port):
    """The rendered stunnel.conf with the pod's mount paths and port replaced."""
    conf = ht.one(docs, "ConfigMap")["data"]["stunnel.conf"]
    assert "accept = 127.0.0.1:6380" in conf
    conf = conf.replace("accept = 127.0.0.1:6380", f"accept = 127.0.0.1:{port}")
    conf = conf.replace("/etc/llmq/redis-tls/ca/ca.crt", str(pki / "ca.crt"))
    conf = conf.replace("/etc/llmq/redis-tls/client/", str(pki / "client") + ".")  # client.tls.crt
    return conf


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """redis-server (password) behind a stunnel TLS server requiring client certificates."""
    d = tmp_path_factory.mktemp("redis-tls")
    make_pki(d)
    for part in ("crt", "key"):  # the names the kubernetes.io/tls Secret mounts
        shutil.copy(d / f"client.{part}", d / f"client.tls.{part}")
    srv = RedisServer(d, free_port(), ["--requirepass", PASSWORD]).start()
    port = free_port()
    log = open(d / "stunnel-server.log", "w")
    server = start_stunnel(f"""foreground = yes
pid =
[redis]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{srv.port}
cert = {d}/server.crt
key = {d}/server.key
CAfile = {d}/ca.crt
verifyChain = yes
""", d / "server.conf", port, log)
    yield d, port, srv
    server.terminate()
    server.wait(10)
    srv.stop()


def test_gateway_and_worker_reach_a_tls_redis_through_the_rendered_proxy(tls_redis, stories, tmp_path):
    pki, tls_port, srv = tls_redis
    docs = rendered(f"rediss://localhost:{tls_port}/0")
    local = free_port()
    proxy = start_stunnel(client_conf(docs, pki, local), tmp_path / "client.conf", local,
                          open(tmp_path / "stunnel-client.log", "w"))
    gw = w = None
    try:
        gw_c = ht.one(docs, "Deployment", "demo-llmq-gateway")["spec"]["template"]["spec"]["containers"][0]
        wk_c = ht.one(docs, "Deployment", "demo-llmq-stories")["spec"]["template"]["spec"]["containers"][0]
        url = ht.arg(gw_c, "--redis")
        assert url == ht.arg(wk_c, "--redis") == "redis://127.0.0.1:6380/0"
        url = url.replace(":6380/", f":{local}/")
        # The password reaches the binaries as the pods pass it: the env variable.
        os.environ["LLMQ_REDIS_PASSWORD"] = PASSWORD
        try:
            d, refs = stories
            w = Worker(d, url, ht.arg(wk_c, "--model-name"), tmp_path / "w.log",
                       "--prefix", ht.arg(wk_c, "--prefix"), "--backend", "cpu")
            gw = Gateway(url, tmp_path / "gw.log", "--models", ht.arg(gw_c, "--models"),
                         "--prefix", ht.arg(gw_c, "--prefix"))
        finally:
            del os.environ["LLMQ_REDIS_PASSWORD"]
        ref = refs[0]
        body = {"model": "stories", "prompt": ref["prompt"], "max_tokens": 8, "temperature": 0}
        deadline = time.time() + 60
        while True:  # the worker's heartbeat may not have reached the gateway yet
            req = urllib.request.Request(f"{gw.base}/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    out = json.load(resp)
                break
            except urllib.error.HTTPError as e:
                if e.code != 404 or time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert out["choices"][0]["text"]
        assert out["usage"]["completion_tokens"] > 0
        # It really went through Redis: the job's records are there.
        direct = redis.Redis(port=srv.port, password=PASSWORD)
        assert direct.exists("llmq:req:stories")
        # The proxy's preStop (run as rendered, on this proxy's port) holds
        # while the binaries are connected, and ends once they are gone.
        proxy_c = ht.one(docs, "Deployment", "demo-llmq-gateway")["spec"]["template"]["spec"]["containers"][1]
        hook = proxy_c["lifecycle"]["preStop"]["exec"]["command"]
        hook = hook[:2] + [hook[2].replace("0100007F:18EC", "0100007F:%04X" % local)]
        waiting = subprocess.Popen(hook)
        time.sleep(1.2)
        assert waiting.poll() is None
        gw.stop()
        w.term()
        assert waiting.wait(5) == 0
    finally:
        for p in (gw, w):
            if p:
                p.stop()
        proxy.terminate()
        proxy.wait(10)


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def test_the_rendered_proxy_checks_the_server_and_presents_the_client_certificate(tls_redis, tmp_path):
    pki, tls_port, _ = tls_redis

    def ping_through(docs):
        """AUTH + PING over one raw connection (no client retries); the
        replies and what the proxy logged."""
        local = free_port()
        log = tmp_path / f"c{local}.log"
        proxy = start_stunnel(client_conf(docs, pki, local), tmp_path / f"c{local}.conf", local, open(log, "w"))
        got = b""
        try:
            with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
                s.sendall(resp("AUTH", PASSWORD) + resp("PING"))
                while b"PONG" not in got:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
        except ConnectionResetError:
            pass
        finally:
            proxy.terminate()
            proxy.wait(10)
        return got, log.read_text()

    got, _ = ping_through(rendered(f"rediss://localhost:{tls_port}/0"))
    assert got == b"+OK\r\n+PONG\r\n"
    # The certificate names localhost, not 127.0.0.1: checkIP refuses it.
    got, log = ping_through(rendered(f"rediss://127.0.0.1:{tls_port}/0"))
    assert got == b"" and "certificate verify failed" in log
    # The server requires a client certificate; without clientSecret none is
    # sent (the server says so; the client may see a reset before the alert).
    got, _ = ping_through(rendered(f"rediss://localhost:{tls_port}/0", client_cert=False))
    assert got == b""
    server_log = pki / "stunnel-server.log"
    deadline = time.time() + 5
    while "peer did not return a certificate" not in server_log.read_text():
        assert time.time() < deadline, server_log.read_text()
        time.sleep(0.05)
