"""The kernels' thread count (kernels/cpu/threads.h) as `llmq generate --json`
reports it: the CPUs the process may use, so `taskset -c 0` gives 1 thread
(a pod's cgroup quota is checked on files by tests/unit/test_threads.c), and
OMP_NUM_THREADS wins when set."""
import json
import os
import shutil
import subprocess

import pytest

from llmqtest import BUILD, FIXTURES

pytestmark = pytest.mark.skipif(not shutil.which("taskset"), reason="taskset (util-linux) not installed")


def generate(prefix=(), **env):
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([*prefix, str(BUILD / "llmq"), "generate", "--model", str(FIXTURES / "hf" / "mixtral_moe"),
                        "--prompt-ids", "1,2,3", "--max-tokens", "2", "--temperature", "0", "--json"],
                       capture_output=True, text=True, timeout=60, env={**base, **env})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_one_cpu_one_thread():
    out = generate(("taskset", "-c", "0"))
    assert out["threads"] == 1
    assert out["threads_why"] == "affinity mask 1 CPU"


def test_omp_num_threads_wins():
    out = generate(("taskset", "-c", "0"), OMP_NUM_THREADS="3")
    assert out["threads"] == 3
    assert out["threads_why"] == "OMP_NUM_THREADS=3"
