"""Poison and expiry in one mixed run next to good jobs: stream entries that
cannot be decoded (no id, an invalid id, not msgpack, not a map, truncated,
trailing bytes, no payload, a junk entry reusing the id of a job that has
already ended), requests of the wrong type or too long, a job delivered more
than --max-attempts times (its workers really killed -9 twice), a job past
its deadline_ms before it starts, cancelled queued and running jobs.

Each must end in the right state with a reason, in the dead stream exactly
when docs/protocol.md says (undecodable entries, exhausted jobs), and the
worker keeps serving: every good job completes with the output of an
uninterrupted run, and nothing is left pending."""
import json
import time

import msgpack

from chaosutil import (ROUNDS, baseline, check_stream, chunks, connect, http_req, job, jobs, key, log_text,
                       model_dir, spec, stop_all, wait_final, wait_until)
from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, submit

N_GOOD = 40


def one_round(d, tmp, rnd):
    tmp.mkdir()
    srv = RedisServer(tmp, free_port()).start()
    r = connect(srv.url)
    gw = Gateway(srv.url, tmp / "gw.log")
    procs = []
    try:
        opts = ("--max-num-seqs", 4, "--claim-idle-ms", 500, "--max-attempts", 2)
        # "tired": delivered to two workers that die while running it
        submit(r, "tired", prompt="Once upon a time", max_tokens=480, ignore_eos=True, temperature=0)
        for k in (1, 2):
            n = len(chunks(r, "tired"))
            w = Worker(d, srv.url, "stories", tmp / f"k{k}.log", *opts, "--consumer", f"k{k}")
            procs.append(w)
            wait_until(lambda: int(job(r, "tired").get("attempts", 0)) == k and len(chunks(r, "tired")) > n + 1, 60,
                       f"attempt {k} of 'tired' to run")
            w.kill()
        assert job(r, "tired")["state"] == "running"

        def post(body):
            st, _, b = http_req(gw.port, "POST", "/v1/jobs", dict(body, model="stories"))
            assert st == 202, (st, b)
            return json.loads(b)["id"]

        # a long job to cancel while it runs: first in line
        cr = post({"prompt": "Tim had a big red ball. He", "max_tokens": 480, "ignore_eos": True})
        # queued jobs cancelled before any worker sees them; a junk entry reuses one's id later
        cq = [post({"prompt": "The bird sang a song", "max_tokens": 20}) for _ in range(2)]
        for jid in cq:
            st, _, b = http_req(gw.port, "DELETE", f"/v1/jobs/{jid}")
            assert st == 200 and json.loads(b)["status"] == "cancelled", (st, b)
        # past its deadline before it starts
        late = post({"prompt": "Ben wanted a cookie", "max_tokens": 20, "deadline_ms": int(time.time() * 1000) - 1})
        # good jobs, half through the gateway, half straight into Redis
        reqs = [spec(i + 1000 * rnd, max_tokens=(16, 32, 48)) for i in range(N_GOOD)]
        expect = baseline(d, reqs)
        good = {}
        for i, req in enumerate(reqs):
            if i % 2:
                good[post(req)] = req
            else:
                good[f"r{rnd}g{i}"] = req
                submit(r, f"r{rnd}g{i}", **req)
        # poison, between the good ones
        S = "llmq:req:stories"
        good_map = msgpack.packb({"v": 1, "model": "stories", "prompt": "x", "max_tokens": 4})
        r.xadd(S, {"junk": "1"})
        r.xadd(S, {"id": "not a valid id!", "p": good_map})
        poison = {"p-garbage": b"\xc1\xff not msgpack", "p-list": msgpack.packb([1, 2, 3]),
                  "p-truncated": good_map[:-3], "p-trailing": good_map + b"\x00", "p-none": None,
                  cq[0]: b"\xc1"}
        for jid, p in poison.items():
            r.xadd(S, {"id": jid} if p is None else {"id": jid, "p": p})
        submit(r, "p-type", prompt="hi", temperature="hot")
        submit(r, "p-long", prompt_ids=[1] * 600)
        submit(r, "p-version", v=2, prompt="hi")
        # now the worker that serves all of it
        w = Worker(d, srv.url, "stories", tmp / "w.log", *opts, "--consumer", "w")
        procs.append(w)
        wait_until(lambda: len(chunks(r, cr)) > 2, 60, "the long job to run")
        st, _, b = http_req(gw.port, "DELETE", f"/v1/jobs/{cr}")
        assert st == 200 and json.loads(b)["status"] == "cancelling", (st, b)
        everything = [*good, cr, *cq, late, "tired", *poison, "p-type", "p-long", "p-version"]
        wait_final(r, everything, 120)
        hs = jobs(r, everything)
        for jid, req in good.items():
            check_stream(r, jid, expect[key(req)])
            assert hs[jid]["state"] == "done", (jid, hs[jid])
        # cancelled while running: the text so far, then the final chunk
        cs = check_stream(r, cr)
        assert hs[cr]["state"] == "cancelled" and cs[-1]["finish"] == "cancelled"
        assert 0 < int(hs[cr]["completion_tokens"]) < 480
        # cancelled while queued: one final chunk, never admitted (the junk entry
        # with the same id did not turn it into a failure)
        for jid in cq:
            cs = check_stream(r, jid)
            assert len(cs) == 1 and cs[0]["finish"] == "cancelled" and hs[jid]["state"] == "cancelled", hs[jid]
            assert hs[jid]["attempts"] == "0" and "error" not in hs[jid]
        assert hs[late]["state"] == "expired" and hs[late]["finish_reason"] == "deadline"
        assert check_stream(r, late)[-1]["finish"] == "deadline"
        assert hs["tired"]["state"] == "failed" and "delivered 3 times (max 2)" in hs["tired"]["error"]
        for jid in ("p-garbage", "p-list", "p-truncated", "p-trailing", "p-none"):
            assert hs[jid]["state"] == "failed" and "cannot decode" in hs[jid]["error"], (jid, hs[jid])
            c = check_stream(r, jid)[-1]
            assert c["finish"] == "error" and c["status"] == 400 and "cannot decode" in c["error"]
        # the decoder refuses a field of the wrong type and another protocol version too
        assert "field 'temperature'" in hs["p-type"]["error"] and "field 'v'" in hs["p-version"]["error"]
        assert "context" in hs["p-long"]["error"]
        for jid in ("p-type", "p-long", "p-version"):
            assert hs[jid]["state"] == "failed" and check_stream(r, jid)[-1]["status"] == 400
        # the dead stream: undecodable entries and the exhausted job, nothing else
        dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange("llmq:dead:stories")]
        assert sorted(e["id"] for e in dead) == sorted(["", "not a valid id!", "tired", "p-type", "p-version",
                                                        *poison]), dead
        assert all(e["reason"] and e["entry"] for e in dead)
        assert r.xpending(S, "workers")["pending"] == 0
        assert r.xlen(S) == 0  # good, bad and poison entries alike deleted with their ends
        # and the worker still serves
        jid = post(reqs[0])
        wait_final(r, [jid], 60)
        check_stream(r, jid, expect[key(reqs[0])])
        assert w.proc.poll() is None and w.term(30) == 0
        assert "job tired failed: delivered 3 times" in log_text(tmp / "w.log")
        gw.stop()
        assert gw.proc.returncode == 0
    finally:
        stop_all(*procs, gw, srv)


def test_poison_and_expiry_next_to_good_jobs(tmp_path):
    d = model_dir()
    for rnd in range(ROUNDS):
        one_round(d, tmp_path / f"round{rnd}", rnd)
