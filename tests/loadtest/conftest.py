"""Fixtures shared by the load generator's tests."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fake_sse import FakeSSEServer  # noqa: E402


@pytest.fixture
def fake():
    """start(**kw) -> a scripted fake OpenAI server (fake_sse.py), stopped after the test."""
    servers = []

    def start(**kw):
        s = FakeSSEServer(**kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
