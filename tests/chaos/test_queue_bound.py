"""The queue bound under a burst: llmq-gateway --max-queue N and many more
concurrent submissions than that, /v1/jobs and /v1/completions mixed.

The burst beyond the bound gets 429 with Retry-After (OpenAI's error shape,
code queue_full) and exactly N jobs are accepted while no worker drains the
queue (the submissions arrive together: the bound holds only because the
gateway checks and submits in one script); once a worker runs, every accepted job completes with the
output of an uninterrupted run, and the request stream still holds every
accepted entry: nothing accepted is trimmed."""
import http.client
import json
import threading

from chaosutil import (ROUNDS, baseline, check_stream, connect, http_req, jobs, key, model_dir, spec, stop_all,
                       wait_final, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker

MAX_QUEUE = 10
BURST = 40


def burst(port, reqs):
    """Send every request at once (connections opened first, then all the
    requests written together); returns the threads and their results
    [(req, kind, status, headers, body)], filled in as answers come."""
    out = [None] * len(reqs)
    go = threading.Barrier(len(reqs))

    def one(i):
        kind = "jobs" if i % 2 else "openai"
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.connect()
        go.wait()
        c.request("POST", "/v1/jobs" if kind == "jobs" else "/v1/completions",
                  body=json.dumps(dict(reqs[i], model="stories")), headers={"Content-Type": "application/json"})
        resp = c.getresponse()
        out[i] = (reqs[i], kind, resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        c.close()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in ts:
        t.start()
    return ts, out


def check_429(st, h, b):
    e = json.loads(b)["error"]
    assert st == 429 and h.get("retry-after") == "1" and e["code"] == "queue_full", (st, h, b)


def one_round(d, tmp, rnd):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port()).start()
    r = connect(srv.url)
    gw = Gateway(srv.url, tmp / "gw.log", "--max-queue", MAX_QUEUE)
    w = None
    try:
        reqs = [spec(i + 1000 * rnd, max_tokens=(16, 32)) for i in range(2 * BURST)]
        expect = baseline(d, reqs)
        # 1. no worker yet: a burst of BURST against an empty queue of bound MAX_QUEUE
        ts, out = burst(gw.port, reqs[:BURST])
        S = "llmq:req:stories"
        # the /v1/jobs ones answer at once; the accepted /v1/completions ones wait for a worker
        wait_until(lambda: sum(1 for o in out if o) + r.xlen(S) - sum(1 for o in out if o and o[2] == 202)
                   >= BURST, 60, "every submission of the burst to be answered or queued")
        accepted = r.xlen(S)
        # the check and the submission are one script: exactly the bound, however the burst interleaves
        assert accepted == MAX_QUEUE, f"{accepted} jobs accepted with --max-queue {MAX_QUEUE}"
        refused = [o for o in out if o and o[2] == 429]
        assert len(refused) == BURST - accepted
        for _, _, st, h, b in refused:
            check_429(st, h, b)
        # 2. a worker drains the queue; a second burst while it runs
        w = Worker(d, srv.url, "stories", tmp / "w.log", "--max-num-seqs", 4)
        ts2, out2 = burst(gw.port, reqs[BURST:])
        for t in ts + ts2:
            t.join(300)
        results = out + out2
        assert all(results), "a submission got no answer"
        # (a finished job's entry is deleted: its job hash is the record of the submission)
        ids = {k.decode()[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}") if k.endswith(b"}")}
        ok = []
        for req, kind, st, h, b in results:
            if st == 429:
                check_429(st, h, b)
                continue
            o = json.loads(b)
            if kind == "jobs":
                assert st == 202, (st, b)
                ok.append((o["id"], req))
            else:
                assert st == 200, (st, b)
                text, finish, n = expect[key(req)]
                assert o["choices"][0]["text"] == text and o["choices"][0]["finish_reason"] == finish
                ok.append((o["id"].split("-", 1)[1], req))
        # every accepted job was queued, and nothing else: none lost, none twice
        assert sorted(ids) == sorted(j for j, _ in ok), (len(ids), len(ok))
        assert r.xinfo_stream(S)["entries-added"] == len(ok)
        wait_final(r, [j for j, _ in ok], 120)
        hs = jobs(r, [j for j, _ in ok])
        for jid, req in ok:
            check_stream(r, jid, expect[key(req)])
            assert hs[jid]["state"] == "done"
        assert r.xpending(S, "workers")["pending"] == 0
        assert r.xlen(S) == 0  # every entry deleted with its job's end
        assert w.proc.poll() is None and gw.proc.poll() is None, "a process died"
        st, _, body = http_req(gw.port, "GET", "/metrics")
        refused_total = sum(1 for o in results if o[2] == 429)
        assert f'llmq_gateway_queue_full_total{{model_name="stories"}} {refused_total}' in body.decode()
        gw.stop()
        assert gw.proc.returncode == 0
        return refused_total
    finally:
        stop_all(*[x for x in (w, gw, srv) if x])


def test_queue_bound_burst(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd)
