"""Redis credentials for gateway, worker and the llmq CLI: from the URL (with
and without an ACL user), from --redis-password-file, $LLMQ_REDIS_PASSWORD_FILE
and $LLMQ_REDIS_PASSWORD, against a real redis-server with requirepass and an
ACL user.  A job completes through each route, and the password appears in
no log, even at LLMQ_LOG=debug."""
import subprocess
import urllib.parse

import pytest

from llmqtest import RedisServer, free_port
from secutil import BUILD, MODEL_NAME, Gateway, clean_env, complete, start_worker

# characters that need %-escapes in a URL, so that both spellings are checked
DEFAULT_PW = "dflt-P@ss:w/rd#7f3a9c"
ACL_USER, ACL_PW = "llmq", "acl-S3cr3t?91be2d"
SECRETS = (DEFAULT_PW, ACL_PW, urllib.parse.quote(DEFAULT_PW, safe=""), urllib.parse.quote(ACL_PW, safe=""))


@pytest.fixture
def locked_redis(tmp_path):
    srv = RedisServer(tmp_path, free_port(), extra=[
        "--requirepass", DEFAULT_PW, "--user", ACL_USER, "on", ">" + ACL_PW, "~*", "&*", "+@all"]).start()
    yield srv
    srv.stop()


def route_config(route, port, tmp_path):
    """(url, extra args for every binary, env) of one credential route."""
    host = f"127.0.0.1:{port}"
    pwfile = tmp_path / "redis-password"
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    if route == "url":
        return f"redis://:{q(DEFAULT_PW)}@{host}", [], clean_env()
    if route == "url-acl-user":
        return f"redis://{ACL_USER}:{q(ACL_PW)}@{host}/0", [], clean_env()
    if route == "flag-file":
        pwfile.write_text(DEFAULT_PW + "\n")
        return f"redis://{host}", ["--redis-password-file", pwfile], clean_env()
    if route == "env-file-acl-user":
        pwfile.write_text(ACL_PW)
        return f"redis://{ACL_USER}@{host}", [], clean_env(LLMQ_REDIS_PASSWORD_FILE=pwfile)
    if route == "env":
        return f"redis://{host}", [], clean_env(LLMQ_REDIS_PASSWORD=DEFAULT_PW)
    raise ValueError(route)


def assert_no_secret(name, text):
    for s in SECRETS:
        assert s not in text, f"{name} shows a Redis password:\n{text}"


@pytest.mark.parametrize("route", ["url", "url-acl-user", "flag-file", "env-file-acl-user", "env"])
def test_job_completes_with_each_credential_route(locked_redis, tiny_model, tmp_path, route):
    url, args, env = route_config(route, locked_redis.port, tmp_path)
    env["LLMQ_LOG"] = "debug"
    w = start_worker(tiny_model, url, args, env, tmp_path / "worker.log")
    gw = None
    try:
        gw = Gateway(url, [*args, "--models", MODEL_NAME], env, tmp_path / "gw.log", wait="readyz")
        assert len(complete(gw, "Once upon a time")) > 0
        cli = subprocess.run([str(BUILD / "llmq"), "submit", "--redis", url, *map(str, args), "--model", MODEL_NAME,
                              "--prompt", "The dog", "--max-tokens", "8", "--wait"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and '"status":"done"' in cli.stdout, cli.stdout + cli.stderr
        assert_no_secret("llmq submit", cli.stdout + cli.stderr)
    finally:
        logs = {"gateway": gw.term() if gw else "", "worker": w.term()}
    for name, text in logs.items():
        assert_no_secret(name, text)
    # the redacted form is what the logs show
    if route.startswith("url") or route == "flag-file" or route == "env":
        user = ACL_USER if "acl" in route else ""
        assert f"redis://{user}:***@127.0.0.1:{locked_redis.port}/0" in logs["gateway"], logs["gateway"]
        assert f"redis://{user}:***@127.0.0.1:{locked_redis.port}/0" in logs["worker"], logs["worker"]


def test_wrong_or_missing_password_is_reported_without_the_password(locked_redis, tmp_path):
    port = locked_redis.port
    wrong = "wrong-" + DEFAULT_PW
    gw = Gateway(f"redis://:{urllib.parse.quote(wrong, safe='')}@127.0.0.1:{port}", [],
                 clean_env(LLMQ_LOG="debug"), tmp_path / "gw.log")
    try:
        assert gw.json("GET", "/readyz")[0] == 503
        gw.wait_log("AUTH")
    finally:
        text = gw.term()
    assert "wrong-" not in text and DEFAULT_PW not in text, text
    # CLI: no password at all, then a bad URL carrying one; errors name the problem, not the secret
    r = subprocess.run([str(BUILD / "llmq"), "get", "--redis", f"redis://127.0.0.1:{port}", "x"],
                       env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and ("NOAUTH" in r.stderr or "auth" in r.stderr.lower()), r.stderr
    r = subprocess.run([str(BUILD / "llmq"), "get", "--redis", f"redis://u:{wrong}@127.0.0.1:99999", "x"],
                       env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "port" in r.stderr and "wrong-" not in r.stderr, r.stderr
    r = subprocess.run([str(BUILD / "llmq"), "get", "--redis", f"redis://127.0.0.1:{port}",
                        "--redis-password-file", str(tmp_path / "absent"), "x"],
                       env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--redis-password-file" in r.stderr, r.stderr
