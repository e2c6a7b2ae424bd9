"""Fixtures of the gateway suites: a started llmq-gateway against the
throwaway redis-server of tests/conftest.py, and the protocol test driver
(fake_worker.FakeWorker) playing the worker's side."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fake_worker import FakeWorker  # noqa: E402
from gwtest import Gateway  # noqa: E402


@pytest.fixture
def start_gateway(redis_server, tmp_path):
    started = []

    def start(*args, models="m1", url=None, **kw):
        a = list(args)
        if models:
            a += ["--models", models]
        g = Gateway(url or redis_server.url, a, tmp_path, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gateway(start_gateway):
    g = start_gateway()
    g.wait_ready()
    return g


@pytest.fixture
def worker(redis_server):
    workers = []

    def start(model="m1", **kw):
        w = FakeWorker(redis_server.url, model, **kw).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()
