"""Fixtures of the end-to-end suites."""
import json

import pytest


@pytest.fixture
def stories(shared_dir):
    """stories260K and its llama2.c greedy references (../shared)."""
    d = shared_dir / "models" / "stories260K"
    refs = [json.loads(line) for line in (d / "reference_greedy.jsonl").read_text().splitlines()]
    return d, refs
