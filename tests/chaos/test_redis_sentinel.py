"""Redis Sentinel failover under the fleet (issue 23): a primary, a replica
(--replicaof) and three sentinels (redis-server --sentinel) on this machine;
one llmq-gateway and one llmq-worker given the redis-sentinel:// URL; 30
streaming clients (half /v1/completions with stream: true, half POST
/v1/jobs + the job's events); the primary killed with SIGKILL while they
stream.  The sentinels promote the replica; both processes must ask them
for the new primary and go on, and every job must end with exactly the
text of an uninterrupted run (`llmq generate`, chaosutil.baseline), with an
output stream of seq 0..n-1 without a repeat.  The pause (kill -> both
/readyz 200 again on the new primary, and kill -> every stream that was
running moving again) is printed as RECOVERY lines (chaosutil.recovery).

Replication is asynchronous: what the primary had not yet sent to the
replica is lost with it.  The fencing and resume logic makes this like a
Redis restart that lost its last writes (test_redis_restart.py): the
worker takes its pending entries back and resumes each job from what its
output stream holds.  Budget: ~10-15 s on a loaded 2-core machine, most of
it the sentinels agreeing (down-after 500 ms) and the 30 streams."""
import pathlib
import socket
import subprocess
import time

import redis

from chaosutil import Client, Moving, baseline, check_clients, connect, job, log_text, model_dir, readyz, \
    recovery, running, spec, stop_all, wait_final, wait_until
from llmqtest import BUILD, RedisServer, free_port
from worker_util import Gateway, Worker

N_JOBS = 30
MASTER = "llmqm"


class Sentinel:
    """One redis-sentinel (redis-server --sentinel) watching MASTER."""

    def __init__(self, tmp, primary_port, i):
        self.port = free_port()
        conf = pathlib.Path(tmp) / f"sentinel{i}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 500\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        self.r = redis.Redis(port=self.port, decode_responses=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_sentinel_failover_under_streams(tmp_path):
    d = model_dir()
    t0 = time.monotonic()
    primary = RedisServer(tmp_path, free_port()).start()
    rdir = tmp_path / "replica"
    rdir.mkdir()
    replica = RedisServer(rdir, free_port(), ["--replicaof", "127.0.0.1", str(primary.port)]).start()
    rr = connect(replica.url)
    wait_until(lambda: rr.info("replication").get("master_link_status") == "up", 10, "the replica's link")
    sentinels = [Sentinel(tmp_path, primary.port, i) for i in range(3)]
    url = "redis-sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + f"/{MASTER}"
    w = gw = None
    clients = []
    try:
        wport = free_port()
        w = Worker(d, url, "stories", tmp_path / "w.log", "--max-num-seqs", 16, "--metrics-port", wport,
                   "--consumer", "w1")
        gw = Gateway(url, tmp_path / "gw.log")
        reqs = [spec(i + 500, max_tokens=(64, 96, 128)) for i in range(N_JOBS)]
        expect = baseline(d, reqs)
        # the sentinels must know each other (hello messages every 2 s) and
        # the replica before the kill, or no failover is authorised
        wait_until(lambda: all(len(s.r.sentinel_sentinels(MASTER)) == 2 and len(s.r.sentinel_slaves(MASTER)) == 1
                               for s in sentinels), 15, "the sentinels to discover each other and the replica")
        clients = [Client(gw.port, "stories", reqs[i], ("jobs", "openai")[i % 2]) for i in range(N_JOBS)]
        for c in clients:
            c.start()
        r = connect(primary.url)
        wait_until(lambda: r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS, 30, "the submissions")
        wait_until(lambda: sum(1 for _ in r.scan_iter("llmq:job:*:out", count=1000)) >= 8, 60,
                   "8 jobs to start streaming")
        ended_before = sum(job(r, c.jid).get("state") == "done" for c in clients if c.jid)
        was_running = running(r)
        r.close()
        killed = time.monotonic()
        primary.proc.kill()
        primary.proc.wait(10)
        streams = Moving(replica.url, was_running, t0=killed)  # on the primary to be
        wait_until(lambda: readyz(gw.port) == 503 or readyz(wport) == 503, 10, "a /readyz to notice")
        wait_until(lambda: sentinels[0].r.sentinel_get_master_addr_by_name(MASTER)[1] == replica.port, 30,
                   "the sentinels to promote the replica")
        promoted = time.monotonic()
        wait_until(lambda: readyz(gw.port) == 200 and readyz(wport) == 200, 30, "both /readyz 200 on the new primary")
        pause = time.monotonic() - killed
        for c in clients:
            c.join(120)
        recovery("sentinel-failover", promoted - killed, "primary killed -9 -> the sentinels name the replica")
        recovery("sentinel-failover", pause, "primary killed -9 -> gateway and worker /readyz 200")
        r = connect(replica.url)
        assert r.info("replication")["role"] == "master"
        # a client may have had its last chunk live from the old primary
        # before the kill, and that write be lost with it: the worker then
        # resumes the job on the new primary and writes it again
        wait_final(r, [c.jid for c in clients], 60)
        streams.report("sentinel-failover", "primary killed -9")
        check_clients(r, clients, expect)  # no chunk twice, none missing
        assert ended_before < N_JOBS, "the failover came after every job had ended"
        assert any(int(job(r, c.jid)["attempts"]) >= 2 for c in clients), "no job was running at the failover"
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
        assert r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS
        # the CLI (rconn_connect) through the sentinels finds the new primary
        cli = [str(BUILD / "llmq"), "get", "--redis"]
        got = subprocess.run(cli + [url, clients[0].jid], capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and '"done"' in got.stdout, got.stderr
        # a sentinel that names a replica (lagging a failover, or a demoted
        # primary back as a replica) is not followed: ROLE is checked
        stale_dir = tmp_path / "stale"
        stale_dir.mkdir()
        stale = RedisServer(stale_dir, free_port(), ["--replicaof", "127.0.0.1", str(replica.port)]).start()
        try:
            sentinels[0].r.sentinel_monitor("stale", "127.0.0.1", stale.port, 1)
            got = subprocess.run(cli + [f"redis-sentinel://127.0.0.1:{sentinels[0].port}/stale", clients[0].jid],
                                 capture_output=True, text=True, timeout=30)
            assert got.returncode != 0 and "not the primary" in got.stderr, (got.returncode, got.stderr)
            # the gateway too: never ready on a replica (ROLE is its first reply)
            gport = free_port()
            with open(tmp_path / "gw-stale.log", "w") as glog:
                g2 = subprocess.Popen([str(BUILD / "llmq-gateway"), "--redis",
                                       f"redis-sentinel://127.0.0.1:{sentinels[0].port}/stale", "--listen",
                                       f"127.0.0.1:{gport}", "--models", "stories"], stdout=glog,
                                      stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: "is not the primary" in log_text(tmp_path / "gw-stale.log"), 10,
                           "the gateway to refuse a replica")
                assert readyz(gport) == 503
            finally:
                g2.terminate()
                assert g2.wait(10) == 0, log_text(tmp_path / "gw-stale.log")[-2000:]
        finally:
            stale.stop()
        wl, gl = log_text(tmp_path / "w.log"), log_text(tmp_path / "gw.log")
        assert "redis connection lost" in wl and "redis: reconnected" in wl
        assert "command connection lost" in gl and gl.count("command connection ready") >= 2
        assert w.proc.poll() is None and w.term(60) == 0, wl[-2000:]
        gw.stop()
        assert gw.proc.returncode == 0, gl[-2000:]
        print(f"sentinel test total {time.monotonic() - t0:.1f} s")
    finally:
        stop_all(*clients, *(x for x in (gw, w) if x), *sentinels, replica, primary)
