"""The worker's /metrics listener (worker/service/health.c) beside
generation: many silent connections held open on --metrics-port do not slow
a completion (they once stalled the step loop 100 ms each), /metrics and
/readyz still answer meanwhile, and the listener binds 127.0.0.1 unless
--metrics-addr says otherwise."""
import http.client
import json
import os
import resource
import socket
import subprocess
import threading
import time

from llmqtest import BUILD, free_port
from worker_util import Worker


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    resp = c.getresponse()
    return resp.status, resp.read().decode()


def wait_ready(port, w):
    for _ in range(600):
        assert w.proc.poll() is None, "the worker exited"
        try:
            if get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the worker's /readyz never said 200")


def complete(url, timeout):
    """One completion through `llmq submit --wait`; its wall time and text."""
    t0 = time.monotonic()
    p = subprocess.run([str(BUILD / "llmq"), "submit", "--redis", url, "--model", "stories", "--prompt",
                        "Once upon a time", "--max-tokens", "16", "--temperature", "0", "--wait",
                        "--force"],  # /readyz can say 200 before the first heartbeat
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return time.monotonic() - t0, json.loads(p.stdout)


def listen_addrs(port):
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of sockets listening on port."""
    found = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for l in lines:
            local, state = l.split()[1], l.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.append(addr)
    return found


def test_silent_connections_do_not_stall_generation(redis_server, stories, tmp_path):
    d, _ = stories
    port = free_port()
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--metrics-port", port)
    stop = threading.Event()
    socks = []

    def hold():  # 50 new connections every 0.5 s that never send a byte
        while not stop.is_set():
            for _ in range(50):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                except OSError:
                    pass
            stop.wait(0.5)

    t = threading.Thread(target=hold)
    try:
        wait_ready(port, w)
        base, quiet = complete(redis_server.url, 60)
        t.start()
        for _ in range(600):  # three rounds of 50 held (bounded: 30 s)
            if len(socks) >= 150:
                break
            time.sleep(0.05)
        assert len(socks) >= 150, f"only {len(socks)} connections to the metrics port opened"
        took, busy = complete(redis_server.url, 60)
        assert t.is_alive()  # finished while the connections were held
        st, body = get(port, "/metrics")
        assert st == 200 and 'llmq:generation_tokens_total{model_name="stories"} 32' in body
        assert get(port, "/readyz")[0] == 200
        stop.set()
        t.join()
        assert busy["status"] == quiet["status"] == "done" and busy["text"] == quiet["text"]
        # generous: with the listener in the step loop, 16 tokens took 80 s here
        assert took < 10 * base + 5, (took, base)
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        for s in socks:
            s.close()
        w.stop()


def test_metrics_addr(redis_server, stories, tmp_path):
    d, _ = stories
    for extra, want in (((), "0100007F"), (("--metrics-addr", "0.0.0.0"), "00000000")):
        port = free_port()
        w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--metrics-port", port, *extra)
        try:
            wait_ready(port, w)
            assert listen_addrs(port) == [want]
        finally:
            w.stop()


def cpu_s(pid):
    """User + system CPU seconds of a process, all threads (/proc/PID/stat)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_listener_rests(redis_server, stories, tmp_path):
    """At the descriptor limit accept() fails with EMFILE while connections
    wait: the listener stays readable, and polling it again at once spun the
    metrics thread at a full core.  It now rests a tick at a time; once the
    held connections are gone it serves again."""
    d, _ = stories
    port = free_port()
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--metrics-port", port)
    socks = []
    try:
        wait_ready(port, w)
        pid = w.proc.pid
        n_open = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (n_open + 4, n_open + 4))
        for _ in range(24):  # 4 are accepted, the rest wait in the backlog
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        time.sleep(0.3)
        c0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(1.0)
        used = (cpu_s(pid) - c0) / (time.monotonic() - t0)
        assert used < 0.25, f"the worker used {used:.2f} CPU-seconds per second while idle at its fd limit"
        assert "metrics listener: accept" in open(tmp_path / "w.log").read()
        for s in socks:
            s.close()
        socks.clear()
        for _ in range(100):  # the closed connections are read to EOF and freed within ticks
            try:
                if get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert get(port, "/readyz")[0] == 200
    finally:
        for s in socks:
            s.close()
        w.stop()
