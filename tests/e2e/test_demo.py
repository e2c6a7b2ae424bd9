"""The README's quickstart demo keeps working: `tools/demo.sh` (what `make
demo` runs after building) brings up redis-server, a worker and the
gateway, streams a completion, and polls a job submitted with llmq."""
import os
import subprocess

from llmqtest import BUILD, ROOT


def run_demo(env_extra):
    env = dict(os.environ, BUILD=str(BUILD), **env_extra)
    r = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], capture_output=True, text=True, timeout=180,
                       env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_demo_with_shared_model(shared_dir):
    out = run_demo({})
    assert "data: [DONE]" in out and '"object":"chat.completion.chunk"' in out
    # stories260K's greedy continuation of the prompt, streamed and whole
    assert '"text":", there was a little girl named Lily.' in out
    assert '"status":"done"' in out


def test_demo_with_generated_model(tmp_path):
    model = tmp_path / "tiny"
    subprocess.run([os.environ.get("PYTHON", str(ROOT / ".venv" / "bin" / "python")), str(ROOT / "tools" / "gen_model.py"),
                    "--shape", "tiny", "--out", str(model), "--train-tokenizer"], check=True, capture_output=True)
    out = run_demo({"MODEL": str(model)})
    assert "data: [DONE]" in out and '"status":"done"' in out
