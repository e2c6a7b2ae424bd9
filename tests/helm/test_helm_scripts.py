"""The helper scripts the chart runs in the worker image, run here against
stand-ins: llmq-fetch-model (docker/fetch-model.sh) with a fake `curl` that
serves a Hugging Face repo from a folder, and llmq-worker-ranks
(docker/worker-ranks.sh) with a fake `llmq-worker` that logs what it got.
Plus static checks of the Dockerfiles the chart's images come from."""
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

from llmqtest import ROOT

FETCH = ROOT / "docker" / "fetch-model.sh"
RANKS = ROOT / "docker" / "worker-ranks.sh"
ENDPOINT = "https://hf.test"

FAKE_CURL = r"""#!/usr/bin/env bash
# curl stand-in: serves $FAKE_HF/<path of the URL>, logs "URL AUTH" lines.
out="" url="" auth="-" resume=0
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=$2; shift 2 ;;
    -H) auth=$2; shift 2 ;;
    -C) resume=1; shift 2 ;;
    --retry|--retry-delay|--connect-timeout) shift 2 ;;
    -*) shift ;;
    *) url=$1; shift ;;
  esac
done
echo "$url ${auth// /_}" >> "$CURL_LOG"
path=${url#"$HF_ENDPOINT"/}
if [ -n "${FAIL_URL:-}" ] && [[ "$url" == *"$FAIL_URL" ]]; then head -c 3 "$FAKE_HF/$path" > "$out"; exit 56; fi
[ -f "$FAKE_HF/$path" ] || exit 22
if [ "$resume" = 1 ] && [ -f "$out" ]; then   # -C -: continue after the bytes already there
  echo "resumed $(stat -c %s "$out")" >> "$CURL_LOG"
  tail -c +$(( $(stat -c %s "$out") + 1 )) "$FAKE_HF/$path" >> "$out"
else
  cat "$FAKE_HF/$path" > "$out"
fi
"""


@pytest.fixture
def hub(tmp_path):
    """A fake hub with one repo, a PATH with the fake curl, and a cache dir."""
    fake = tmp_path / "hub"
    repo, rev = "org/tiny", "abc123"
    files = {
        "config.json": '{"architectures": ["LlamaForCausalLM"]}',
        "generation_config.json": "{}",
        "tokenizer.json": "{}",
        "tokenizer_config.json": "{}",
        "model.safetensors.index.json": "{}",
        "model-00001-of-00002.safetensors": "A" * 1000,
        "model-00002-of-00002.safetensors": "B" * 1000,
        "pytorch_model.bin": "not wanted",
        "original/consolidated.00.pth": "not wanted",
        "README.md": "not wanted",
    }
    for name, text in files.items():
        p = fake / repo / "resolve" / rev / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    listing = fake / "api" / "models" / repo / "revision" / rev
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"siblings": [{"rfilename": n} for n in files]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text(FAKE_CURL)
    curl.chmod(0o755)
    log = tmp_path / "curl.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HF=str(fake),
               HF_ENDPOINT=ENDPOINT, CURL_LOG=str(log))
    env.pop("HF_TOKEN", None)
    return {"repo": repo, "rev": rev, "files": files, "env": env, "log": log, "fake": fake,
            "dest": tmp_path / "models" / "hf" / repo / rev}


def fetch(hub, **env):
    e = dict(hub["env"], **env)
    args = ["bash", str(FETCH), "--repo", hub["repo"], "--revision", hub["rev"], "--dest", str(hub["dest"])]
    return subprocess.run(args, env=e, capture_output=True, text=True, timeout=60)


def fetched(hub):
    if not hub["log"].exists():
        return []
    return [line.split()[0] for line in hub["log"].read_text().splitlines() if line.startswith("http")]


def test_fetch_downloads_only_what_the_worker_reads(hub):
    r = fetch(hub, HF_TOKEN="s3cret")
    assert r.returncode == 0, r.stderr
    dest = hub["dest"]
    wanted = {n for n in hub["files"] if not n.endswith((".bin", ".pth", ".md"))}
    assert {p.name for p in dest.iterdir()} == wanted | {".llmq-complete"}
    for n in wanted:
        assert (dest / n).read_text() == hub["files"][n]
    assert (dest / ".llmq-complete").read_text().strip() == f"{hub['repo']}@{hub['rev']}"
    leftovers = [p.name for p in dest.parent.iterdir() if p.name != dest.name]
    assert leftovers == []  # no .partial, no .lock
    lines = [l for l in hub["log"].read_text().splitlines() if l.startswith("http")]
    assert all(line.endswith("Authorization:_Bearer_s3cret") for line in lines)
    assert f"{ENDPOINT}/api/models/{hub['repo']}/revision/{hub['rev']}" == lines[0].split()[0]


def test_fetch_skips_a_complete_copy_without_network(hub):
    assert fetch(hub).returncode == 0
    hub["log"].unlink()
    r = fetch(hub, FAKE_HF="/nonexistent")  # the hub is gone
    assert r.returncode == 0 and "already in" in r.stdout
    assert fetched(hub) == []  # and was not asked


def test_fetch_resumes_after_an_interrupted_download(hub):
    r = fetch(hub, FAIL_URL="model-00002-of-00002.safetensors")
    assert r.returncode != 0 and "download of model-00002-of-00002.safetensors failed" in r.stderr
    assert not hub["dest"].exists()  # nothing half-done is ever published
    hub["log"].unlink()
    r = fetch(hub)
    assert r.returncode == 0, r.stderr
    again = {u.rsplit("/", 1)[1] for u in fetched(hub)}
    assert "model-00001-of-00002.safetensors" not in again  # finished files are kept
    assert "model-00002-of-00002.safetensors" in again
    # The interrupted file continued from its 3 bytes instead of starting over.
    assert "resumed 3" in hub["log"].read_text().splitlines()
    assert (hub["dest"] / "model-00002-of-00002.safetensors").read_text() == "B" * 1000


def test_fetch_replaces_another_revision(hub):
    dest = hub["dest"]
    dest.mkdir(parents=True)
    (dest / ".llmq-complete").write_text("org/tiny@old\n")
    (dest / "stale.safetensors").write_text("old")
    assert fetch(hub).returncode == 0
    assert not (dest / "stale.safetensors").exists()
    assert (dest / ".llmq-complete").read_text().strip() == "org/tiny@abc123"


def test_fetch_refuses_repos_without_safetensors(hub):
    listing = hub["fake"] / "api" / "models" / hub["repo"] / "revision" / hub["rev"]
    listing.write_text(json.dumps({"siblings": [{"rfilename": n} for n in
                                                ("config.json", "tokenizer.json", "pytorch_model.bin")]}))
    r = fetch(hub)
    assert r.returncode != 0 and "no safetensors" in r.stderr
    assert not hub["dest"].exists()


def test_fetch_waits_for_a_live_lock_and_takes_over_a_stale_one(hub):
    lock = pathlib.Path(str(hub["dest"]) + ".lock")
    lock.mkdir(parents=True)
    p = subprocess.Popen(["bash", str(FETCH), "--repo", hub["repo"], "--revision", hub["rev"],
                          "--dest", str(hub["dest"])], env=dict(hub["env"], LLMQ_FETCH_STALE_S="1", LLMQ_FETCH_POLL_S="0.2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    assert p.poll() is None and fetched(hub) == []  # waiting for the holder
    out, err = p.communicate(timeout=30)  # the lock is not refreshed: taken over
    assert p.returncode == 0, err
    assert "taking it over" in err and (hub["dest"] / ".llmq-complete").exists()


# ------------------------------------------------------------ llmq-worker-ranks

FAKE_WORKER = r"""#!/usr/bin/env bash
rank="" prev=""
for a in "$@"; do [ "$prev" = --rank ] && rank=$a; prev=$a; done
echo "$rank start cvd=$CUDA_VISIBLE_DEVICES args=$*" >> "$LOG"
trap 'echo "$rank term" >> "$LOG"; sleep "${TERM_DELAY:-0}"; echo "$rank exit" >> "$LOG"; exit 0' TERM
if [ "$rank" = "${CRASH_RANK:-none}" ]; then sleep 0.3; echo "$rank crash" >> "$LOG"; exit 3; fi
while [ ! -e "$DIR/stop-$rank" ]; do sleep 0.05; done
exit 0
"""


@pytest.fixture
def ranks(tmp_path):
    w = tmp_path / "llmq-worker"
    w.write_text(FAKE_WORKER)
    w.chmod(0o755)
    log = tmp_path / "ranks.log"
    log.touch()
    env = dict(os.environ, LLMQ_WORKER_BIN=str(w), LOG=str(log), DIR=str(tmp_path),
               LLMQ_METRICS_PORT="9090")

    def start(index, k, **extra):
        e = dict(env, LWS_WORKER_INDEX=str(index), LLMQ_RANKS_PER_POD=str(k), **extra)
        return subprocess.Popen(["bash", str(RANKS), "--model", "/m", "--tp", "8", "--group", "g-0"],
                                env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lines():
        return log.read_text().splitlines()

    def wait_for(pred, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            if pred(lines()):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; log:\n{log.read_text()}")

    return start, lines, wait_for, tmp_path


def test_ranks_start_this_pods_share(ranks):
    start, lines, wait_for, d = ranks
    p = start(1, 4, CRASH_RANK="5")
    p.communicate(timeout=20)
    assert p.returncode == 3  # the crashed rank's status ends the pod
    starts = {l.split()[0]: l for l in lines() if " start " in l}
    assert set(starts) == {"4", "5", "6", "7"}
    for r, l in starts.items():
        assert f"cvd={int(r) - 4} " in l
        assert "--model /m --tp 8 --group g-0 --rank " + r in l
        assert "--metrics-port" not in l and "--metrics-addr" not in l  # only global rank 0 serves HTTP
    assert {l.split()[0] for l in lines() if l.endswith(" term")} == {"4", "6", "7"}


def test_sigterm_goes_to_the_leader_which_drains_first(ranks):
    start, lines, wait_for, d = ranks
    p = start(0, 2, TERM_DELAY="0.5", POD_IP="10.1.2.3", LLMQ_METRICS_ADDR="0.0.0.0")
    wait_for(lambda ls: sum(" start " in l for l in ls) == 2)
    l0 = next(l for l in lines() if l.startswith("0 start"))
    l1 = next(l for l in lines() if l.startswith("1 start"))
    assert l0.endswith("--tp-addr 10.1.2.3 --tp-port 29500 --metrics-port 9090 --metrics-addr 0.0.0.0")
    assert "--metrics-port" not in l1 and "--metrics-addr" not in l1 and "--tp-port" not in l1  # peers find rank 0 through Redis
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=20)
    assert p.returncode == 0
    log = lines()
    assert log.index("0 term") < log.index("0 exit") < log.index("1 term")


def test_pod_without_the_leader_ignores_sigterm(ranks):
    start, lines, wait_for, d = ranks
    p = start(1, 2)
    wait_for(lambda ls: sum(" start " in l for l in ls) == 2)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert p.poll() is None and not any(l.endswith(" term") for l in lines())
    (d / "stop-2").touch()  # the group ends (the leader stopped): rank 2 returns
    p.communicate(timeout=20)
    assert "3 term" in lines()  # the pod's other rank is ended with it


def test_ranks_refuse_a_missing_index(ranks):
    start, lines, wait_for, d = ranks
    p = start("", 2)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 2 and "LWS_WORKER_INDEX" in err and lines() == []


# ------------------------------------------------------------ images

def test_dockerfiles():
    for name, binary in (("gateway", "llmq-gateway"), ("worker", "llmq-worker")):
        text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
        stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
        assert len(stages) == 2 and stages[0][1] == "build", name  # multi-stage
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1].isdigit() and int(users[-1]) > 0, name  # numeric non-root
        assert re.search(rf'^ENTRYPOINT \["/usr/bin/tini", "--", "{binary}"\]', text, re.M), name
        assert (ROOT / "docker" / f"{name}.Dockerfile.dockerignore").read_text().count(".venv")
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "nvidia/cuda:" in worker and " cuda " in worker  # `make cuda` in the build stage
    assert "-runtime-" in worker.split("FROM")[-1]
    for script in ("llmq-fetch-model", "llmq-worker-ranks"):
        assert f"/usr/local/bin/{script}" in worker
    assert re.search(r"^FROM debian:\$\{DEBIAN_RELEASE\}-slim", (ROOT / "docker" / "gateway.Dockerfile").read_text(), re.M)
