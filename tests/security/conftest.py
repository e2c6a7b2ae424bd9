"""Fixtures of the security suites (helpers: secutil.py)."""
import pytest

from secutil import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
