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
    """Ranks started one by one (as pods of a LeaderWorkerSet) meet through
    the rendezvous and talk over TCP: peers first, one after the leader."""
    d, refs = stories
    r = connect(redis_server.url)
    args = ("--tp", 4, "--group", "g1", "--tp-timeout-ms", 20000)
    peers = [Worker(d, redis_server.url, "stories", tmp_path / f"peer{k}.log", *args, "--rank", k) for k in (2, 1)]
    time.sleep(0.3)  # the peers wait for a leader
    leader = Worker(d, redis_server.url, "stories", tmp_path / "leader.log", *args, "--rank", 0,
                    "--tp-addr", "127.0.0.1")
    time.sleep(0.3)
    peers.append(Worker(d, redis_server.url, "stories", tmp_path / "peer3.log", *args, "--rank", 3))
    try:
        for i in range(3):
            submit(r, f"rv{i}", prompt=refs[i]["prompt"], max_tokens=48, temperature=0)
        wait_final(r, [f"rv{i}" for i in range(3)], timeout=120)
        for i in range(3):
            assert text_of(chunks(r, f"rv{i}")) == refs[i]["completion"]
            assert ids_of(chunks(r, f"rv{i}")) == refs[i]["output_ids"]
        rdv = r.hgetall("llmq:group:{g1}:rdv")
        assert rdv[b"world"] == b"4" and rdv[b"generation"] == b"1"
        assert rdv[b"addr"].startswith(b"127.0.0.1:") and len(rdv[b"token"]) == 32
        log = (tmp_path / "leader.log").read_text()
        assert "waiting for 3 peer ranks at 127.0.0.1:" in log and "complete: 4 ranks" in log
        assert leader.term() == 0
        for p in peers:
            assert p.proc.wait(10) == 0
    finally:
        leader.stop()
        for p in peers:
            p.stop()


def test_rank_by_rank_leader_killed_then_regrouped(redis_server, stories, tmp_path):
    """Kill -9 the leader of a rank-by-rank group: its peer exits non-zero
    naming it; a new generation forms and resumes the jobs, which end with the texts of an uninterrupted run."""
    d, refs = stories
    r = connect(redis_server.url)
    args = ("--tp", 2, "--group", "g2", "--tp-timeout-ms", 2000, "--tp-addr", "127.0.0.1")
    reqs = {f"k{i}": dict(prompt=refs[i]["prompt"], max_tokens=48, temperature=0) for i in range(4)}
    leader = Worker(d, redis_server.url, "stories", tmp_path / "leader1.log", *args, "--rank", 0,
                    "--max-num-seqs", 1, "--consumer", "old")
    peer = Worker(d, redis_server.url, "stories", tmp_path / "peer1.log", *args, "--rank", 1)
    for jid, req in reqs.items():
        submit(r, jid, **req)
    deadline = time.time() + 60
    while not any(chunks(r, j) for j in reqs) and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.time()
    leader.proc.kill()
    assert peer.proc.wait(10) != 0
    assert time.time() - t0 < 5
    assert "rank 0 (the leader) left the group" in (tmp_path / "peer1.log").read_text()

    leader2 = Worker(d, redis_server.url, "stories", tmp_path / "leader2.log", *args, "--rank", 0,
                     "--claim-idle-ms", 300, "--consumer", "new")
    peer2 = Worker(d, redis_server.url, "stories", tmp_path / "peer2.log", *args, "--rank", 1)
    try:
        wait_final(r, list(reqs), timeout=120)
        for i, j in enumerate(reqs):
            cs = chunks(r, j)
            assert [c["seq"] for c in cs] == list(range(len(cs)))
            assert text_of(cs) == refs[i]["completion"]
        assert r.hget("llmq:group:{g2}:rdv", "generation") == b"2"
        assert leader2.term() == 0
        assert peer2.proc.wait(10) == 0
    finally:
        leader2.stop()
        peer2.stop()


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


def test_falcon_tp2_group_serves_transformers_greedy(redis_server, tmp_path):
    """A Falcon model (the 40B layout: grouped KV heads, two LayerNorms,
    parallel attention) served by a TP 2 worker group through Redis: every
    case continues as transformers does."""
    from llmqtest import FIXTURES
    d = FIXTURES / "hf" / "falcon_new"
    cases = json.loads((d / "expected.json").read_text())["cases"]
    r = connect(redis_server.url)
    w = Worker(d, redis_server.url, "falcon", tmp_path / "w.log", "--tp", 2)
    try:
        for i, c in enumerate(cases):
            submit(r, f"f{i}", model="falcon", prompt_ids=c["prompt_ids"], max_tokens=len(c["greedy"]),
                   temperature=0, ignore_eos=True)
        wait_final(r, [f"f{i}" for i in range(len(cases))])
        for i, c in enumerate(cases):
            assert ids_of(chunks(r, f"f{i}")) == c["greedy"]
        assert w.term() == 0
    finally:
        w.stop()
    assert "FalconForCausalLM" in (tmp_path / "w.log").read_text()
