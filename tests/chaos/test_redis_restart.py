"""Redis restarts (and pauses) under the whole fleet: redis-server with AOF
(appendfsync always), one llmq-gateway, one llmq-worker and 100 streaming
clients (half /v1/completions with stream: true, half POST /v1/jobs + the
job's events, a few plain non-streaming completions), and redis-server
stopped and started again on the same port and directory while they run.
Rounds vary the fault: SIGTERM (round 0, what `make test` runs) or SIGKILL
(nothing is lost either with appendfsync always), Redis away for 1, 0.3 or
6 s (past the 5 s cap of the reconnect backoff), the restart early or late
in the run.  A second test pauses redis-server instead (SIGSTOP for 7 s,
then SIGCONT): nothing closes the connections, so both sides must notice
the silence themselves (the worker's 5 s command timeout, the gateway's
watchdog) and reconnect.

Every job must end with exactly the output of an uninterrupted run; every
client gets its full text, either on the stream it opened or by resuming
with Last-Event-ID; both processes log the loss and the reconnect; /readyz
of both is 503 while Redis is away and 200 after.  The recovery is timed
from the restart (or SIGCONT) to both /readyz 200 and to every job that
was running at the fault moving again (a chunk written after the restart,
or ended), and printed as RECOVERY lines (chaosutil.recovery)."""
import signal
import time

from chaosutil import (ROUNDS, Client, Moving, Stopwatch, baseline, check_clients, connect, job, log_text,
                       model_dir, readyz, recovery, running, spec, stop_all, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker

N_JOBS = 100


def one_round(d, tmp, rnd, fault):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port(), ["--appendonly", "yes", "--appendfsync", "always"]).start()
    wport = free_port()
    w = Worker(d, srv.url, "stories", tmp / "w.log", "--max-num-seqs", 16, "--metrics-port", wport,
               "--consumer", "w1")
    gw = Gateway(srv.url, tmp / "gw.log")
    clients = []
    try:
        reqs = [spec(i + 1000 * rnd, max_tokens=(48, 96, 160)) for i in range(N_JOBS + 8)]
        expect = baseline(d, reqs)
        kinds = ["jobs", "openai", "jobs", "openai", "jobs", "openai", "jobs", "openai", "jobs", "openai-plain"]
        clients = [Client(gw.port, "stories", reqs[i], kinds[i % len(kinds)]) for i in range(N_JOBS)]
        for c in clients:
            c.start()
        r = connect(srv.url)
        # let the fleet get going: every job submitted, some done, some half way, most queued
        wait_until(lambda: r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS, 60, "the submissions")
        started = (24, 60, 8)[rnd % 3]
        wait_until(lambda: sum(1 for _ in r.scan_iter("llmq:job:*:out", count=1000)) >= started, 120,
                   f"{started} jobs to start streaming")
        ended_before = sum(job(r, c.jid).get("state") in ("done",) for c in clients if c.jid)
        was_running = running(r)
        if fault == "pause":
            srv.proc.send_signal(signal.SIGSTOP)
        elif rnd % 2:
            srv.proc.kill()
            srv.proc.wait(10)
        else:
            srv.stop()
        # clients whose network breaks during the outage: they reconnect with Last-Event-ID
        cut = sum(c.cut() for c in clients[::6] if c.kind == "jobs")
        wait_until(lambda: readyz(gw.port) == 503, 30, "the gateway's /readyz to say 503")
        wait_until(lambda: readyz(wport) == 503, 30, "the worker's /readyz to say 503")
        # new submissions meanwhile get 503 + Retry-After, and retry
        late = [Client(gw.port, "stories", reqs[N_JOBS + k], "openai" if k % 2 else "jobs") for k in range(8)]
        for c in late:
            c.start()
        time.sleep((1.0, 0.3, 6.0)[rnd % 3])
        assert readyz(gw.port) == 503 and readyz(wport) == 503
        # timed from the fault's end: SIGCONT, or the restart (redis-server loading its AOF counts)
        ready = Stopwatch(lambda: readyz(gw.port) == 200 and readyz(wport) == 200)
        streams = Moving(srv.url, was_running, attempts=was_running if fault == "pause" else None)
        if fault == "pause":
            srv.proc.send_signal(signal.SIGCONT)
        else:
            srv.start()
        wait_until(lambda: readyz(gw.port) == 200, 30, "the gateway's /readyz to say 200 again")
        wait_until(lambda: readyz(wport) == 200, 30, "the worker's /readyz to say 200 again")
        clients += late
        for c in clients:
            c.join(300)
        how = "SIGCONT" if fault == "pause" else ("restart after SIGKILL" if rnd % 2 else "restart after SIGTERM")
        recovery(f"redis-{fault} round {rnd}", ready.took(), f"{how} -> gateway and worker /readyz 200")
        streams.report(f"redis-{fault} round {rnd}", how)
        r = connect(srv.url)
        check_clients(r, clients, expect)
        assert any(int(job(r, c.jid)["attempts"]) >= 2 for c in clients), "no job was running at the restart"
        assert ended_before < N_JOBS, "the restart came after every job had ended"
        assert sum(c.submit_503 for c in late) > 0, "no submission met the outage"
        assert cut == 0 or sum(c.resumes for c in clients) >= cut
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
        assert r.xlen("llmq:dead:stories") == 0
        # nothing lost, nothing twice; every entry deleted with its job's end
        assert r.xinfo_stream("llmq:req:stories")["entries-added"] == len(clients)
        assert r.xlen("llmq:req:stories") == 0
        wl, gl = log_text(tmp / "w.log"), log_text(tmp / "gw.log")
        assert "redis connection lost" in wl and "redis: reconnected" in wl
        assert "command connection lost" in gl and "pub/sub connection lost" in gl
        if fault == "pause":
            assert "redis: no answer for" in gl
        assert gl.count("command connection ready") >= 2
        assert w.proc.poll() is None and w.term(60) == 0, wl[-2000:]
        gw.stop()
        assert gw.proc.returncode == 0, log_text(tmp / "gw.log")[-2000:]
        return sum(c.resumes for c in clients)
    finally:
        if fault == "pause" and srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGCONT)
        stop_all(*clients, gw, w, srv)


def test_redis_restart_under_full_fleet(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd, "restart")


def test_redis_pause_under_full_fleet(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd, "pause")
