"""The include arrows of docs/architecture.md ('Folders and arrows') hold, and
tools/check_layers.sh, which every build runs, fails when one is broken."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("LLMQ_ROOT", Path(__file__).resolve().parents[2]))
SCRIPT = ROOT / "tools" / "check_layers.sh"
FOLDERS = ("common", "kernels", "worker", "client", "gateway", "loadtest")


def check(root):
    return subprocess.run(["bash", str(SCRIPT), str(root)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path):
    """A copy of the source folders that a test may break."""
    for d in FOLDERS:
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("*.o", "*.d"))
    return tmp_path


def test_the_repository_keeps_its_arrows():
    r = check(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


def test_every_worker_part_is_a_folder():
    loose = [p.name for p in (ROOT / "worker").iterdir() if p.is_file()]
    assert loose == [], f"worker/ holds files outside its part folders: {loose}"
    assert sorted(p.name for p in (ROOT / "worker").iterdir()) == ["comm", "engine", "model", "service", "tokenizer"]


@pytest.mark.parametrize("path, include, why", [
    # a lower folder including a higher one
    ("kernels/cpu/rmsnorm.c", '#include "worker/engine/engine.h"', "kernels may not include"),
    ("common/log.c", '#include "kernels/backend.h"', "common may not include"),
    ("worker/model/model.c", '#include "worker/engine/engine.h"', "worker/model may not include"),
    ("worker/engine/engine.c", '#include "worker/service/service.h"', "worker/engine may not include"),
    # siblings: comm, tokenizer and model do not know each other
    ("worker/tokenizer/chat.c", '#include "worker/model/config.h"', "worker/tokenizer may not include"),
    ("worker/comm/comm_shm.c", '#include "worker/tokenizer/tokenizer.h"', "worker/comm may not include"),
    # the client library speaks only the protocol; the gateway knows no worker
    ("client/libllmq.c", '#include "worker/engine/engine.h"', "client may not include"),
    ("client/libllmq.c", '#include "client/cli/cli.h"', "client may not include"),
    ("gateway/gw.c", '#include "worker/tokenizer/tokenizer.h"', "gateway may not include"),
    ("client/cli/cmd_generate.c", '#include "worker/service/service.h"', "client/cli may not include"),
    # the engine knows nothing of Redis
    ("worker/engine/sched.c", "#include <hiredis/hiredis.h>", "must know nothing of Redis"),
])
def test_a_broken_arrow_fails(tree, path, include, why):
    f = tree / path
    f.write_text(f.read_text() + "\n" + include + "\n")
    r = check(tree)
    assert r.returncode == 1, r.stdout
    assert path in r.stdout and why in r.stdout, r.stdout


def test_a_file_left_in_worker_fails(tree):
    (tree / "worker" / "loose.c").write_text('#include "common/log.h"\n')
    r = check(tree)
    assert r.returncode == 1 and "worker/loose.c" in r.stdout, r.stdout


def test_the_build_runs_the_check(tree):
    """`make` stops before compiling anything when an arrow is broken."""
    for f in ("Makefile", "cuda.mk", "emu.mk", "fuzz.mk"):
        shutil.copy(ROOT / f, tree / f)
    shutil.copytree(ROOT / "tools", tree / "tools")
    f = tree / "worker/tokenizer/stopstr.c"
    f.write_text(f.read_text() + '\n#include "worker/engine/sched.h"\n')
    r = subprocess.run(["make", "--no-print-directory", "layers"], cwd=tree, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "worker/tokenizer/stopstr.c" in r.stdout, r.stdout + r.stderr
