"""SIGTERM to gateways under load, with a real worker (the synthetic engine at a
fixed rate) and real SSE clients.

Two gateways get SIGTERM while each streams two dozen jobs: one with
--drain-timeout 30 (every open stream finishes on it, exact to the last
chunk), one with --drain-timeout 1 (its streams are cut when the time is
up, and their clients resume on a third gateway — any gateway serves any
job — with Last-Event-ID, to the identical text).  Both stop accepting at once and exit 0.
The gap of each cut client (its stream cut -> its events stream open again
on the third gateway) is timed: the slowest is a RECOVERY line
(chaosutil.recovery)."""
import socket

from chaosutil import (ROUNDS, Client, baseline, check_stream, connect, key, log_text, model_dir, recovery, spec,
                       stop_all, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker

PER_GATEWAY = 24
# The worker is the synthetic engine at a fixed rate (worker/engine/synth.h:
# real admission, scheduling, detokenizer and Redis traffic, no compute), so
# the streams last as long on every machine: 24 jobs of 200-400 tokens one at
# a time outlive the hasty gateway's 1 s drain by seconds (on the real tiny
# model a fast CPU finished them all inside it).
RATE = 2000


def refused(port):
    """No new connection gets through (refused, or reset: one that was in
    the backlog when the listening socket closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def one_round(d, tmp, rnd):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port()).start()
    w = Worker(d, srv.url, "stories", tmp / "w.log", "--max-num-seqs", 1, "--backend", "synthetic",
               "--synthetic-rate", RATE)
    patient = Gateway(srv.url, tmp / "patient.log", "--drain-timeout", 30)
    hasty = Gateway(srv.url, tmp / "hasty.log", "--drain-timeout", 1)
    spare = Gateway(srv.url, tmp / "spare.log")
    clients = []
    try:
        reqs = [spec(i + 1000 * rnd, max_tokens=(200, 300, 400)) for i in range(2 * PER_GATEWAY)]
        expect = baseline(d, reqs, f"synthetic:{RATE}")
        for i, req in enumerate(reqs):
            # the hasty gateway's clients use the job API: a /v1/completions stream cut before its
            # first chunk leaves its client without the job's id
            kind = "jobs" if i % 2 or i >= PER_GATEWAY else "openai"
            gw = patient if i < PER_GATEWAY else hasty
            clients.append(Client(gw.port, "stories", req, kind, resume_port=spare.port))
        for c in clients:
            c.start()
        r = connect(srv.url)
        wait_until(lambda: all(c.jid for c in clients if c.kind == "jobs") and sum(c.text != "" for c in clients)
                   >= PER_GATEWAY, 120, "the streams to flow")
        for gw in (patient, hasty):
            gw.proc.send_signal(15)
        wait_until(lambda: refused(patient.port) and refused(hasty.port), 10, "both gateways to stop accepting")
        for c in clients:
            c.join(300)
        for i, c in enumerate(clients):
            assert not c.is_alive() and c.exc is None, (c.jid, c.exc, c.errors)
            text, finish, n = expect[key(c.req)]
            assert c.text == text and c.finish == finish, (c.kind, c.jid, c.errors)
            if i < PER_GATEWAY:
                assert c.resumes == 0, f"a stream of the patient gateway broke: {c.errors}"
            check_stream(r, c.jid, (text, finish, n))
        assert sum(c.resumes for c in clients[PER_GATEWAY:]) > 0, "no stream outlived the 1 s drain"
        gaps = [g for c in clients[PER_GATEWAY:] for g in c.gaps]
        recovery(f"gateway-drain round {rnd}", max(gaps, default=None),
                 f"stream cut at the 1 s drain -> events stream 200 on the third gateway "
                 f"(slowest of {len(gaps)} resumes)")
        assert r.xlen("llmq:req:stories") == 0  # every entry deleted with its job's end
        assert patient.proc.wait(60) == 0 and hasty.proc.wait(60) == 0
        assert "drain timeout" in log_text(tmp / "hasty.log")
        assert w.proc.poll() is None and spare.proc.poll() is None, "a process died"
        return sum(c.resumes for c in clients)
    finally:
        stop_all(*clients, patient, hasty, spare, w, srv)


def test_gateways_drain_under_load(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd)
