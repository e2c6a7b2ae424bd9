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


def make_pki(d):
    """A CA (ca.pem), a server certificate it signed for 127.0.0.1 and
    localhost (srv.pem, srv.key), and another CA that signed nothing
    (other.pem), made with the openssl command in directory d.  EC keys:
    RSA key generation costs seconds on a loaded machine."""
    import subprocess

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=llmq test CA")
    ossl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
         "-days", "2", "-extfile", "ext.cnf")
    ossl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=another CA")
    return {"ca": d / "ca.pem", "cert": d / "srv.pem", "key": d / "srv.key", "other": d / "other.pem"}
