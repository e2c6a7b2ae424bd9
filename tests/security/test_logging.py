"""Prompts and outputs never reach the logs at the default level (info):
a job with a unique prompt goes through the OpenAI completion and chat
routes (whole and streamed) and the job API, and neither the prompt nor
the generated text shows in the gateway's or the worker's log."""
import time
import uuid

from secutil import MODEL_NAME, Gateway, clean_env, complete, start_worker


def test_prompts_and_outputs_not_logged_at_info(redis_server, tiny_model, tmp_path):
    marker = "zq" + uuid.uuid4().hex[:12]
    prompt = f"Once upon a time {marker} met a dog"
    chat_secret = f"my secret is {marker}x"
    env = clean_env(LLMQ_LOG="info")
    w = start_worker(tiny_model, redis_server.url, [], env, tmp_path / "worker.log")
    gw = None
    outputs = []
    try:
        gw = Gateway(redis_server.url, ["--models", MODEL_NAME], env, tmp_path / "gw.log", wait="readyz")
        outputs.append(complete(gw, prompt))
        outputs.append("".join(c["choices"][0]["text"] for c in gw.sse(
            "/v1/completions", {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 24, "seed": 3,
                                "ignore_eos": True})))
        chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": chat_secret}], "max_tokens": 24,
                "ignore_eos": True, "temperature": 0}
        st, body = gw.json("POST", "/v1/chat/completions", chat)
        assert st == 200, body
        outputs.append(body["choices"][0]["message"]["content"])
        outputs.append("".join(c["choices"][0]["delta"].get("content", "") for c in gw.sse("/v1/chat/completions", chat)))
        st, job = gw.json("POST", "/v1/jobs", {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 24, "seed": 9,
                                               "ignore_eos": True})
        assert st == 202, job
        deadline = time.time() + 60
        while time.time() < deadline:
            st, j = gw.json("GET", f"/v1/jobs/{job['id']}")
            if j.get("status") in ("done", "failed"):
                break
            time.sleep(0.05)
        assert j["status"] == "done", j
        outputs.append(j["text"])
    finally:
        logs = {"gateway": gw.term() if gw else "", "worker": w.term()}
    assert all(len(o) >= 8 for o in outputs), outputs
    for name, text in logs.items():
        assert marker not in text, f"{name} logs a prompt:\n{text}"
        for o in outputs:
            assert o not in text, f"{name} logs an output ({o!r}):\n{text}"
