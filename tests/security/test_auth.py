"""Bearer API keys of llmq-gateway: from a file or the environment, rotated
on SIGHUP (a failed reload keeps the old keys), checked exactly, and
reported by /readyz.  Real gateway, real redis-server, HTTP over sockets."""
import signal

import pytest

from secutil import Gateway, auth, clean_env

GOOD_KEYS = ("sk-env-1", "sk-env-2")


def status(gw, key=None, path="/v1/models"):
    return gw.request("GET", path, headers=auth(key) if key is not None else None)[0]


def test_keys_from_environment(redis_server, tmp_path):
    gw = Gateway(redis_server.url, [], clean_env(LLMQ_API_KEYS=" sk-env-1 ,sk-env-2,, "), tmp_path / "gw.log")
    try:
        for k in GOOD_KEYS:
            assert status(gw, k) == 200
        assert status(gw) == 401
        assert status(gw, "sk-env-3") == 401
        st, h, _ = gw.request("GET", "/v1/models", headers={"Authorization": "Basic c2stZW52LTE="})
        assert st == 401 and "bearer" in h["www-authenticate"].lower()
        # prefixes, extensions and case changes of a good key are all wrong keys
        for k in ("sk-env-", "sk-env-1x", "SK-ENV-1", "sk-env-1,sk-env-2", ""):
            assert status(gw, k) == 401, k
        st, body = gw.json("GET", "/readyz")
        assert st == 200 and body["auth"] == "enabled" and body["status"] == "ready", body
    finally:
        log = gw.term()
    assert "authentication on: 2 API keys" in log
    assert "NO API KEYS" not in log
    assert not any(k in log for k in GOOD_KEYS), log


@pytest.mark.parametrize("route", ["flag", "env"])
def test_keys_from_file(redis_server, tmp_path, route):
    keys = tmp_path / "keys"
    keys.write_text("# the fleet's keys\n\n  sk-file-1  \nsk-file-2\r\n   # indented comment\n")
    env = clean_env(LLMQ_API_KEY_FILE=keys) if route == "env" else clean_env()
    args = ["--api-key-file", keys] if route == "flag" else []
    gw = Gateway(redis_server.url, args, env, tmp_path / "gw.log")
    try:
        assert status(gw, "sk-file-1") == 200 and status(gw, "sk-file-2") == 200
        assert status(gw, "# the fleet's keys") == 401 and status(gw, "sk-file-3") == 401
        assert status(gw, path="/healthz") == 200 and status(gw, path="/metrics") == 200  # probes stay open
    finally:
        log = gw.term()
    assert "sk-file-1" not in log and "sk-file-2" not in log


def test_file_and_environment_keys_merge(redis_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-file\n")
    gw = Gateway(redis_server.url, ["--api-key-file", keys], clean_env(LLMQ_API_KEYS="sk-env"), tmp_path / "gw.log")
    try:
        assert status(gw, "sk-file") == 200 and status(gw, "sk-env") == 200 and status(gw, "sk-other") == 401
    finally:
        gw.term()


def test_longest_key(redis_server, tmp_path):
    """256-byte keys work; one byte more is refused at start, without echoing it."""
    long_key = "k" * 256
    gw = Gateway(redis_server.url, [], clean_env(LLMQ_API_KEYS=long_key), tmp_path / "gw.log")
    try:
        assert status(gw, long_key) == 200
        assert status(gw, long_key + "k") == 401 and status(gw, long_key[:-1]) == 401
    finally:
        gw.term()


@pytest.mark.parametrize("case", ["missing file", "empty file", "empty env", "too long", "control char"])
def test_bad_key_sources_refuse_to_start(redis_server, tmp_path, case):
    """A configured key source that yields no usable key is an error, never 'auth off'."""
    import subprocess
    from secutil import BUILD
    f = tmp_path / "keys"
    args, env = [], clean_env()
    if case == "missing file":
        args = ["--api-key-file", tmp_path / "nope"]
    elif case == "empty file":
        f.write_text("# nothing\n\n")
        env = clean_env(LLMQ_API_KEY_FILE=f)
    elif case == "empty env":
        env = clean_env(LLMQ_API_KEYS=" , ,")
    elif case == "too long":
        env = clean_env(LLMQ_API_KEYS="secret-" + "x" * 300)
    else:
        f.write_bytes(b"secret-\x01key\n")
        args = ["--api-key-file", f]
    r = subprocess.run([str(BUILD / "llmq-gateway"), "--redis", redis_server.url, "--listen", "127.0.0.1:0",
                        *map(str, args)], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r.stderr
    assert "API keys" in r.stderr and "secret-" not in r.stderr, r.stderr


def test_sighup_rotates_keys(redis_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-old\n")
    gw = Gateway(redis_server.url, ["--api-key-file", keys], clean_env(), tmp_path / "gw.log")
    try:
        assert status(gw, "sk-old") == 200 and status(gw, "sk-new") == 401
        # rotate: write the new file aside and rename it in place, as a Secret update does
        tmp = tmp_path / "keys.tmp"
        tmp.write_text("sk-new\n")
        tmp.rename(keys)
        mark = len(gw.text())
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log("API keys reloaded: 1 keys", start=mark)
        assert status(gw, "sk-old") == 401 and status(gw, "sk-new") == 200
        # failed reloads keep the current keys (and auth stays on)
        for breakage in ("empty", "missing"):
            if breakage == "empty":
                keys.write_text("\n# rotated badly\n")
            else:
                keys.unlink()
            mark = len(gw.text())
            gw.proc.send_signal(signal.SIGHUP)
            gw.wait_log("API keys not reloaded, keeping the 1 current ones", start=mark)
            assert status(gw, "sk-new") == 200 and status(gw, "sk-old") == 401 and status(gw) == 401
        keys.write_text("sk-third\nsk-fourth\n")
        mark = len(gw.text())
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log("API keys reloaded: 2 keys", start=mark)
        assert status(gw, "sk-new") == 401 and status(gw, "sk-third") == 200 and status(gw, "sk-fourth") == 200
        assert gw.json("GET", "/readyz")[1]["auth"] == "enabled"
    finally:
        log = gw.term()
    assert not any(k in log for k in ("sk-old", "sk-new", "sk-third", "sk-fourth")), log


def test_no_keys_warns_and_readyz_says_so(redis_server, tmp_path):
    gw = Gateway(redis_server.url, [], clean_env(), tmp_path / "gw.log")
    try:
        assert status(gw) == 200
        st, body = gw.json("GET", "/readyz")
        assert st == 200 and body == {"status": "ready", "redis": True, "auth": "disabled"}, body
        # SIGHUP without a key source: logged, nothing changes, the gateway keeps serving
        mark = len(gw.text())
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log("nothing to reload", start=mark)
        assert status(gw) == 200
    finally:
        log = gw.term()
    assert "NO API KEYS" in log


def test_readyz_not_ready_keeps_auth_detail(tmp_path):
    """/readyz keeps its 503 while Redis is away, and still tells whether auth is on."""
    from llmqtest import free_port
    gw = Gateway(f"redis://127.0.0.1:{free_port()}", [], clean_env(LLMQ_API_KEYS="sk-x"), tmp_path / "gw.log")
    try:
        st, body = gw.json("GET", "/readyz")
        assert st == 503 and body["auth"] == "enabled" and body["redis"] is False and body["reason"], body
    finally:
        gw.term()
