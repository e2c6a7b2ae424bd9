"""Three llmq-workers compete for one request stream while 200 jobs run;
one is stalled (SIGSTOP past --claim-idle-ms, then SIGCONT) and later killed
with -9, and one is drained with SIGTERM, all in the middle of the run.

Every job must be served to completion exactly once: its output stream in
Redis holds seq 0..n-1 without gap or repeat and exactly one final chunk,
its text is that of an uninterrupted run (`llmq generate`), nothing is left
pending and nothing went to the dead stream.  The drained worker exits 0
and takes no new job after SIGTERM; what it could not finish within
--drain-timeout (0 s in even rounds: all it held, 30 s in odd ones) is
resumed by the last worker.  The stalled worker, running again, finds its
jobs taken over (its writes are fenced, common/jobops.h) and drops them
instead of writing a second copy of their output.  Recovery is timed (a
RECOVERY line each, chaosutil.recovery) from the stall, the kill and the
drained worker's exit to every job it held moving again elsewhere."""
import json
import signal
import time

from chaosutil import (FINAL, ROUNDS, Moving, baseline, check_stream, connect, job, jobs, key, log_text,
                       model_dir, spec, stop_all, wait_final, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Worker, submit

N_JOBS = 200


def running_on(r, jids, consumer):
    return [j for j, h in jobs(r, jids).items() if h.get("worker") == consumer and h.get("state") == "running"]


def n_ended(r, jids):
    return sum(h.get("state") == "done" for h in jobs(r, jids).values())


def one_round(d, tmp, rnd):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port()).start()
    r = connect(srv.url)
    common = ("--max-num-seqs", 8, "--claim-idle-ms", 1000, "--max-attempts", 5)
    ws = {}
    try:
        drain = 0 if rnd % 2 == 0 else 30
        for name, extra in (("A", ()), ("B", ("--drain-timeout", drain)), ("C", ())):
            ws[name] = Worker(d, srv.url, "stories", tmp / f"{name}.log", *common, *extra, "--consumer", name)
        wait_until(lambda: len(r.hgetall("llmq:workers")) == 3, 30, "three workers' heartbeats")
        reqs = {f"r{rnd}j{i}": spec(i + 1000 * rnd, max_tokens=(32, 64, 96), long_every=10, long_tokens=300)
                for i in range(N_JOBS)}
        expect = baseline(d, list(reqs.values()))
        jids = list(reqs)
        for jid in jids[:N_JOBS // 2]:  # the second half once the stalled worker runs again
            submit(r, jid, **reqs[jid])
        # stall A while it runs jobs (B and C take them over), then let it go on
        wait_until(lambda: n_ended(r, jids) >= N_JOBS // 10 and running_on(r, jids, "A"), 120,
                   "a tenth done and A running jobs")
        stalled = running_on(r, jids, "A")
        ws["A"].proc.send_signal(signal.SIGSTOP)
        stall_watch = Moving(srv.url, stalled, settle=0.2)
        wait_until(lambda: not set(running_on(r, jids, "A")) & set(stalled), 60, "A's jobs to be taken over")
        t_cont = int(time.time() * 1000)
        ws["A"].proc.send_signal(signal.SIGCONT)
        wait_until(lambda: json.loads(r.hget("llmq:workers", "A"))["ts"] > t_cont, 30, "A to run again")
        for jid in jids[N_JOBS // 2:]:
            submit(r, jid, **reqs[jid])
        # kill -9 A once it runs new jobs
        wait_until(lambda: set(running_on(r, jids, "A")) - set(stalled), 120, "A to run new jobs")
        held_by_a = running_on(r, jids, "A")
        ws["A"].kill()
        kill_watch = Moving(srv.url, held_by_a, settle=0.2)
        # SIGTERM B while it runs jobs: it must finish or leave them, and exit 0
        wait_until(lambda: running_on(r, jids, "B"), 120, "B running jobs")
        t_term = int(time.time() * 1000)
        assert n_ended(r, jids) < N_JOBS - 8, "the faults came too late in the run"
        held_by_b = running_on(r, jids, "B")
        assert ws["B"].term(60) == 0, log_text(tmp / "B.log")[-2000:]
        left_by_b = [j for j, h in jobs(r, held_by_b).items() if h.get("state") not in FINAL]
        drain_watch = Moving(srv.url, left_by_b, settle=0.2)
        assert "SIGTERM: draining" in log_text(tmp / "B.log")
        wait_final(r, jids, 300)
        stall_watch.report(f"worker-stall round {rnd}", "SIGSTOP of a worker (--claim-idle-ms 1000)")
        kill_watch.report(f"worker-kill round {rnd}", "kill -9 of a worker")
        drain_watch.report(f"worker-drain-{drain}s round {rnd}", f"exit of a worker drained with SIGTERM "
                           f"(it held {len(held_by_b)} jobs)")
        for jid, req in reqs.items():
            check_stream(r, jid, expect[key(req)])
            h = job(r, jid)
            assert h["state"] == "done", (jid, h)
            # nothing new was taken by B once it was draining (1 s for a pull already in flight)
            assert not (h["worker"] == "B" and int(h["started"]) > t_term + 1000), (jid, h)
        resumed = [j for j in jids if int(job(r, j)["attempts"]) >= 2]
        assert set(held_by_a) & set(resumed), "no job of the killed worker was resumed"
        assert r.xpending("llmq:req:stories", "workers")["pending"] == 0
        assert r.xlen("llmq:dead:stories") == 0
        assert r.xinfo_stream("llmq:req:stories")["entries-added"] == N_JOBS
        assert r.xlen("llmq:req:stories") == 0  # every entry deleted with its job's end
        assert "resuming" in log_text(tmp / "C.log")
        assert ws["C"].proc.poll() is None and ws["C"].term(60) == 0, log_text(tmp / "C.log")[-2000:]
        # "taken over by another worker" (a chunk refused) or "another worker took it over" (its end refused)
        assert "another worker" in log_text(tmp / "A.log")
        return len(resumed)
    finally:
        stop_all(*ws.values(), srv)


def test_three_workers_one_killed_one_drained(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd)
