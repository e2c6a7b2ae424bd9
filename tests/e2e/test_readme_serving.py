"""README.md's Serving commands work as written, as root too (the gateway
refuses root without LLMQ_ALLOW_ROOT) and with the shared model's chat.

The block is run by bash as the README shows it; only what a shared test
machine forces changes: the build folder, ../shared, and the two ports
(6379, 8000), which other runs may hold.
"""
import os
import re
import subprocess

from llmqtest import BUILD, ROOT, free_port


def serving_block():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Serving\n"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_readme_serving_commands_run_as_written(shared_dir, tmp_path):
    script = serving_block()
    assert "build/llmq-gateway" in script and "../shared/models/stories260K" in script
    redis_port, http_port = free_port(), free_port()
    script = (script.replace("build/", f"{BUILD}/")
                    .replace("../shared/", f"{shared_dir}/")
                    .replace("6379", str(redis_port))
                    .replace("8000", str(http_port)))
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_ALLOW_ROOT"}  # as a user's shell has it
    # -e: any command that fails fails the test; the trap stops what it started.
    out = subprocess.run(["bash", "-e", "-c", "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "data: [DONE]" in out.stdout and '"delta":{"content":' in out.stdout, log[-3000:]
    assert re.search(r"16 issued, 16 completed, 0 failed", out.stdout), log[-3000:]
    assert not list(tmp_path.glob("*.rdb"))  # the example leaves nothing behind
