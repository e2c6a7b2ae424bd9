"""Shared pytest fixtures for llmq's Python test suites; the paths and
helpers they use live in tests/llmqtest.py.  `redis_server` starts a
throwaway real redis-server on a free port and stops it afterwards."""
import pytest

from llmqtest import BUILD, SHARED, RedisServer, free_port


@pytest.fixture(scope="session")
def build_dir():
    return BUILD


@pytest.fixture(scope="session")
def shared_dir():
    if SHARED is None:
        pytest.skip("../shared is absent: shared models/tokenizers not available")
    return SHARED



@pytest.fixture
def redis_server(tmp_path):
    srv = RedisServer(tmp_path, free_port()).start()
    yield srv
    srv.stop()
