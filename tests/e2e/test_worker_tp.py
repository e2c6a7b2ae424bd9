"""Tensor-parallel worker groups on CPU ranks, end to end through a real
redis-server: a TP 2 group serves the same texts as TP 1, groups started
rank by rank meet through the Redis rendezvous, and a killed peer takes the
group down within the collective timeout while another group resumes its
jobs exactly."""
import json
import os
import signal
import subprocess
import time

import pytest

from worker_util import Worker, assert_clean_stream, chunks, connect, ids_of, job, submit, text_of, wait_final





def test_tp2_group_serves_reference_texts(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "stories", tmp_path / "w.log", "--tp", 2)
    try:
        for i, ref in enumerate(refs):
            submit(r, f"t{i}", prompt=ref["prompt"], max_tokens=48, temperature=0)
        wait_final(r, [f"t{i}" for i in range(len(refs))])
        for i, ref in enumerate(refs):
            assert text_of(chunks(r, f"t{i}")) == ref["completion"]
            assert ids_of(chunks(r, f"t{i}")) == ref["output_ids"]
    finally:
        w.stop()
    assert "rank 0 of 2" in (tmp_path / "w.log").read_text()


def test_rank_by_rank_rendezvous(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    peer = Worker(d, redis_server.url, "stories", tmp_path / "peer.log", "--tp", 2, "--rank", 1, "--group", "g1")
    time.sleep(0.3)  # the peer waits for a leader
    leader = Worker(d, redis_server.url, "stories", tmp_path / "leader.log", "--tp", 2, "--rank", 0,
                    "--group", "g1")
    try:
        submit(r, "rv", prompt=refs[2]["prompt"], max_tokens=48, temperature=0)
        wait_final(r, ["rv"])
        assert text_of(chunks(r, "rv")) == refs[2]["completion"]
        assert r.hget("llmq:group:{g1}:rdv", "world") == b"2"
        assert leader.term() == 0
        assert peer.proc.wait(10) == 0
    finally:
        leader.stop()
        peer.stop()


def test_killed_peer_fails_group_and_jobs_resume(redis_server, stories, tmp_path):
    d, refs = stories
    r = connect(redis_server.url)
    reqs = {f"p{i}": dict(prompt=refs[i % 8]["prompt"], max_tokens=400, ignore_eos=True, temperature=0)
            for i in range(6)}
    ref_worker = Worker(d, redis_server.url, "stories", tmp_path / "ref.log", "--max-num-seqs", 2)
    for jid, req in reqs.items():
        submit(r, "u" + jid, **req)
    wait_final(r, ["u" + j for j in reqs], timeout=120)
    ref_worker.stop()
    expected = {j: text_of(chunks(r, "u" + j)) for j in reqs}

    group = Worker(d, redis_server.url, "stories", tmp_path / "group.log", "--tp", 2, "--max-num-seqs", 2,
                   "--consumer", "g", "--tp-timeout-ms", 1000)
    for jid, req in reqs.items():
        submit(r, jid, **req)
    while not any(chunks(r, j) for j in reqs):
        time.sleep(0.01)
    peers = subprocess.run(["pgrep", "-P", str(group.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(peers) == 1
    t0 = time.time()
    os.kill(int(peers[0]), signal.SIGKILL)
    rc = group.proc.wait(15)
    assert rc != 0 and time.time() - t0 < 5
    log = (tmp_path / "group.log").read_text()
    assert "rank 1" in log
    fresh = Worker(d, redis_server.url, "stories", tmp_path / "fresh.log", "--max-num-seqs", 2,
                   "--claim-idle-ms", 300)
    try:
        wait_final(r, list(reqs), timeout=120)
        for j in reqs:
            cs = chunks(r, j)
            assert [c["seq"] for c in cs] == list(range(len(cs)))
            assert text_of(cs) == expected[j]
            assert job(r, j)["state"] == "done"
    finally:
        fresh.stop()
