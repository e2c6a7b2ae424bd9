"""Priority through the queue (docs/protocol.md "Lanes"), with a real
redis-server, llmq-gateway and llmq-worker: jobs wait in their priority's
lane, the gateway exports each lane's lag, --max-queue counts every lane,
and a worker that runs one job at a time (--max-num-seqs 1) takes a backlog
high priority first while its starvation guard (--lane-burst 2) lets a low
priority job through after every two high ones."""
import http.client
import json
import re
import time

import pytest

from llmqtest import RedisServer, free_port
from worker_util import Gateway, Worker, connect, job, wait_final

N_LOW, N_HIGH, BOUND, BURST = 3, 5, 8, 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shared_dir):
    tmp = tmp_path_factory.mktemp("priority")
    srv = RedisServer(tmp, free_port()).start()
    gw = Gateway(srv.url, tmp / "gw.log", "--models", "stories", "--max-queue", BOUND)
    yield srv, gw, tmp, shared_dir / "models" / "stories260K"
    gw.stop()
    srv.stop()


def post_job(gw, **body):
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request("POST", "/v1/jobs", body=json.dumps(dict(model="stories", **body)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    c.close()
    return out


def lags(gw):
    """llmq_queue_lag of the model on the gateway's /metrics, by lane."""
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return {lane: float(v) for lane, v in
            re.findall(r'^llmq_queue_lag\{model_name="stories",lane="(\w+)"\} (\S+)$', text, re.M)}


@pytest.fixture(scope="module")
def backlog(fleet):
    """Low priority jobs first, then high ones, with no worker yet."""
    _, gw, _, _ = fleet
    body = dict(prompt="Once upon a time", max_tokens=24, ignore_eos=True, temperature=0)
    low = [post_job(gw, priority=-1, **body) for _ in range(N_LOW)]
    high = [post_job(gw, priority=1, **body) for _ in range(N_HIGH)]
    assert all(st == 202 for st, _ in low + high), low + high
    return [j["id"] for _, j in low], [j["id"] for _, j in high]


def test_lag_per_lane_and_the_bound_counts_every_lane(fleet, backlog):
    srv, gw, _, _ = fleet
    # the queue is full (BOUND jobs over two lanes): a default-lane job is refused too
    st, body = post_job(gw, prompt="x", max_tokens=1, priority=0)
    assert st == 429, body
    want = {"high": N_HIGH, "default": 0, "low": N_LOW}
    deadline = time.time() + 8
    while lags(gw) != want and time.time() < deadline:
        time.sleep(0.1)
    assert lags(gw) == want
    r = connect(srv.url)
    assert r.xlen("llmq:req:stories#high") == N_HIGH and r.xlen("llmq:req:stories#low") == N_LOW


def test_high_first_and_the_guard_lets_low_through(fleet, backlog):
    srv, gw, tmp, model = fleet
    low, high = backlog
    w = Worker(model, srv.url, "stories", tmp / "w.log", "--max-num-seqs", 1, "--lane-burst", BURST)
    try:
        r = connect(srv.url)
        wait_final(r, low + high, timeout=120)
        hs = {jid: job(r, jid) for jid in low + high}
        assert all(h["state"] == "done" for h in hs.values()), hs
        order = sorted(low + high, key=lambda jid: (int(hs[jid]["started"]), int(hs[jid]["finished"])))
        # one at a time: each starts once the one before has finished
        for a, b in zip(order, order[1:]):
            assert int(hs[b]["started"]) >= int(hs[a]["finished"])
        # highest lane first, FIFO within a lane, and after every BURST (2)
        # high jobs taken while low ones wait, one low job
        want = [high[0], high[1], low[0], high[2], high[3], low[1], high[4], low[2]]
        names = {jid: f"H{i}" for i, jid in enumerate(high)} | {jid: f"L{i}" for i, jid in enumerate(low)}
        assert [names[j] for j in order] == [names[j] for j in want]
        # nothing is left waiting or pending on any lane
        for lane in ("llmq:req:stories#high", "llmq:req:stories", "llmq:req:stories#low"):
            assert r.xpending(lane, "workers")["pending"] == 0
        deadline = time.time() + 8
        while lags(gw) != {"high": 0, "default": 0, "low": 0} and time.time() < deadline:
            time.sleep(0.1)
        assert lags(gw) == {"high": 0, "default": 0, "low": 0}
    finally:
        w.stop()
