"""A tensor-parallel worker group on the emulated CUDA device, end to end
through a real redis-server: `llmq-worker --backend cuda --tp 2` from the
emulated build (two rank processes, each with its own emulated GPU, the
activations all-reduced by the NCCL code of kernels/cuda/comm_nccl.cu over
the emulator's NCCL) serves llama2.c's reference texts for stories260K."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "e2e"))
from worker_util import assert_clean_stream, chunks, connect, ids_of, submit, text_of, wait_final  # noqa: E402

from llmqtest import ROOT  # noqa: E402

EMU = pathlib.Path(os.environ.get("LLMQ_EMU_BUILD") or ROOT / "build-emu")
pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("SANITIZER")),
                       reason="emulated end-to-end runs belong to the plain make test (minutes under a sanitizer)"),
    pytest.mark.skipif(not (EMU / "llmq-worker").exists(), reason=f"{EMU}/llmq-worker not built (make cuda-emu)"),
]


def test_tp2_cuda_group_serves_reference_texts(redis_server, shared_dir, tmp_path):
    d = shared_dir / "models" / "stories260K"
    refs = [json.loads(line) for line in (d / "reference_greedy.jsonl").read_text().splitlines()]
    r = connect(redis_server.url)
    log = tmp_path / "w.log"
    env = dict(os.environ, LLMQ_EMU_FATAL="1", LLMQ_EMU_MEM_MB="1024", LLMQ_CUDA_DTYPE="f32")
    with open(log, "w") as lf:
        w = subprocess.Popen([str(EMU / "llmq-worker"), "--model", str(d), "--model-name", "stories", "--redis",
                              redis_server.url, "--backend", "cuda", "--tp", "2"],
                             stdout=lf, stderr=subprocess.STDOUT, env=env)
    try:
        for i, ref in enumerate(refs):
            submit(r, f"g{i}", prompt=ref["prompt"], max_tokens=48, temperature=0)
        wait_final(r, [f"g{i}" for i in range(len(refs))], timeout=180)
        for i, ref in enumerate(refs):
            cs = chunks(r, f"g{i}")
            assert_clean_stream(cs)
            assert ids_of(cs) == ref["output_ids"]
            assert text_of(cs) == ref["completion"]
    finally:
        w.kill()
        w.wait(10)
    text = log.read_text()
    assert "rank 0 of 2" in text
    assert text.count("Emulated") >= 2, text[-2000:]  # both ranks on an emulated GPU
    assert "llmq-emu:" not in text  # no detector report
