"""valgrind finds no memory error and no leak (definitely or indirectly
lost) in gateway, worker and `llmq submit` over a demo run that ends with
SIGTERM: tools/valgrind_demo.sh, on a build of its own next to $LLMQ_BUILD."""
import os
import shutil
import subprocess

import pytest

from secutil import BUILD, PYTHON, ROOT


def instrumented(binary):
    """True for a sanitizer build (valgrind cannot run those)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return any(s in out for s in ("libasan", "libubsan", "libtsan"))


def test_demo_under_valgrind_is_clean():
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (make deps installs it)")
    if instrumented(BUILD / "llmq-gateway"):
        pytest.skip("a sanitizer build: valgrind cannot run it (the plain `make test` runs this test)")
    build = BUILD.parent / (BUILD.name + "-valgrind")
    r = subprocess.run(["bash", str(ROOT / "tools" / "valgrind_demo.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "BUILD": str(build), "PYTHON": PYTHON})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valgrind: clean" in r.stdout
    for name in ("gateway", "worker", "cli"):
        assert f"valgrind: {name:<8} exit 0   errors 0, definitely lost 0 bytes, indirectly lost 0 bytes" in r.stdout, \
            r.stdout
