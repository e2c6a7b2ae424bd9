"""Redis refuses writes for a moment (maxmemory reached with the default
noeviction policy: every write command gets an OOM error) while a gateway
and a worker stream 60 jobs to SSE clients.

A chunk the worker could not write must not leave a gap: the worker drops
the job (no XACK), its entry is claimed again after --claim-idle-ms and the
job resumed from what its output stream holds.  Every client gets the text
of an uninterrupted run, every output stream is clean, nothing is left
pending.  Rounds vary how long Redis refuses (0.1, 0.5, 2 s).  Recovery is
timed from the end of the refusal to every job running then moving again
(a RECOVERY line, chaosutil.recovery)."""
import time

from chaosutil import (ROUNDS, Client, Moving, baseline, check_stream, connect, jobs, key, log_text, model_dir,
                       running, spec, stop_all, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker

N_JOBS = 60


def one_round(d, tmp, rnd):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port()).start()
    w = Worker(d, srv.url, "stories", tmp / "w.log", "--max-num-seqs", 16, "--claim-idle-ms", 1000)
    gw = Gateway(srv.url, tmp / "gw.log")
    clients = []
    try:
        reqs = [spec(i + 1000 * rnd, max_tokens=(96, 160, 240)) for i in range(N_JOBS)]
        expect = baseline(d, reqs)
        clients = [Client(gw.port, "stories", q, "jobs" if i % 2 else "openai") for i, q in enumerate(reqs)]
        for c in clients:
            c.start()
        r = connect(srv.url)
        wait_until(lambda: r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS, 60, "the submissions")
        wait_until(lambda: sum(1 for _ in r.scan_iter("llmq:job:*:out", count=1000)) >= 16, 120,
                   "16 jobs to start streaming")
        r.config_set("maxmemory", "1")
        time.sleep((0.1, 0.5, 2.0)[rnd % 3])
        r.config_set("maxmemory", "0")
        watch = Moving(srv.url, running(r))
        for c in clients:
            c.join(300)
        watch.report(f"redis-oom-{(0.1, 0.5, 2.0)[rnd % 3]}s round {rnd}",
                     "writes accepted again (a job whose chunk was refused resumes after --claim-idle-ms 1000)")
        for c in clients:
            assert not c.is_alive() and c.exc is None, (c.jid, c.exc, c.errors)
            text, finish, n = expect[key(c.req)]
            assert c.text == text and c.finish == finish, (c.kind, c.jid, c.errors)
            check_stream(r, c.jid, (text, finish, n))
        assert all(h["state"] == "done" for h in jobs(r, [c.jid for c in clients]).values())
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
        assert r.xlen("llmq:dead:stories") == 0 and r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS
        assert r.xlen("llmq:req:stories") == 0  # every entry deleted with its job's end
        assert "a chunk was not written (OOM" in log_text(tmp / "w.log"), "the refusal hit no chunk"
        assert w.proc.poll() is None and w.term(60) == 0
        gw.stop()
        assert gw.proc.returncode == 0
    finally:
        stop_all(*clients, gw, w, srv)


def test_redis_refusing_writes(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd)
