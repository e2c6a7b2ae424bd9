"""Helpers of the llmq-loadtest suites: run the binary from $LLMQ_BUILD and
read back its JSON record."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(os.environ.get("LLMQ_ROOT", pathlib.Path(__file__).resolve().parents[2]))
BUILD = pathlib.Path(os.environ.get("LLMQ_BUILD", ROOT / "build"))
EXE = BUILD / "llmq-loadtest"


class Result:
    def __init__(self, proc, record):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.j = record

    def __repr__(self):
        return f"rc={self.rc}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr[-3000:]}"


def run(tmp_path, *args, timeout=120, json_out=True):
    """Run llmq-loadtest with args; returns a Result (j = the JSON record or None)."""
    if not EXE.exists():
        raise RuntimeError(f"{EXE} is missing: run make first")
    out = tmp_path / "lt.json"
    if out.exists():
        out.unlink()
    cmd = [str(EXE), *map(str, args)]
    if json_out:
        cmd += ["--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    record = json.loads(out.read_text()) if json_out and out.exists() else None
    return Result(proc, record)
