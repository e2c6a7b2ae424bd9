"""Helpers of the fault-injection suites (tests/chaos): real redis-server,
real llmq-worker and llmq-gateway processes, real HTTP/SSE clients.

What is expected of a job comes from an independent run: `llmq generate`
(the offline CLI on the same model, no Redis, no batching with other jobs)
computes the text, finish reason and token count of every request the
suites send, greedy and seeded alike.  A job served through the fleet,
whatever failed meanwhile, must end with exactly that.

LLMQ_CHAOS_ROUNDS (default 1) repeats every scenario; `make test` runs one
round, a soak runs more (docs/operations.md, "Fault report").  Each
scenario times how long the fleet took to serve again after its fault
(recovery(), Stopwatch, Moving) and prints a `RECOVERY` line; with
LLMQ_FAULT_FIGURES=path the lines are appended to that file too
(tools/fault_figures.py collects them for the fault report).
"""
import http.client
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "e2e"))
from llmqtest import BUILD, SHARED  # noqa: E402
from worker_util import chunks, connect, job  # noqa: E402,F401

# Several workers, a gateway, redis-server and the clients share a few cores
# here: OpenMP teams that spin would stall each other (docs/operations.md,
# "CPU workers sharing cores"), so each worker computes on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROUNDS = max(1, int(os.environ.get("LLMQ_CHAOS_ROUNDS", "1")))
FINAL = ("done", "failed", "cancelled", "expired")

PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park",
    "The little dog was very happy because",
    "One day, a girl named Sue found a",
    "Tim had a big red ball. He",
    "The sun was shining and the birds were",
    'Mom said, "Do not touch the',
    "There was a small cat who liked to",
    "Ben wanted a cookie",
    "The bird sang a song",
    "In a small house lived a",
    "Sam and his mom",
]


def model_dir():
    import pytest
    if SHARED is None:
        pytest.skip("../shared is absent: the stories260K model is not available")
    return SHARED / "models" / "stories260K"


def spec(i, max_tokens=(24, 40, 64), long_every=0, long_tokens=300):
    """Request i of a deterministic mix: greedy and seeded sampling, with and
    without ignore_eos, a few lengths; every long_every-th one is long."""
    mt = max_tokens[i % len(max_tokens)]
    if long_every and i % long_every == long_every - 1:
        mt = long_tokens
    req = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": mt}
    if i % 3 == 1:
        req.update(temperature=0.8, top_p=0.9, seed=1000 + i)
    else:
        req.update(temperature=0)
    if i % 2 == 0 or mt == long_tokens:
        req["ignore_eos"] = True
    return req


_baseline_cache = {}


def baseline(model, reqs, backend=None):
    """What an uninterrupted run gives for each request: {key: (text,
    finish_reason, completion_tokens)}, computed with `llmq generate`
    (requests with the same parameters go in one batch) on the cpu backend,
    or on `backend` (e.g. "synthetic:2000", for a worker that runs it)."""
    groups = {}
    for r in reqs:
        k = key(r, backend)
        if k in _baseline_cache:
            continue
        params = (r["max_tokens"], r.get("temperature", 1.0), r.get("top_p"), r.get("seed"), bool(r.get("ignore_eos")))
        groups.setdefault(params, set()).add(r["prompt"])
    for (mt, temp, top_p, seed, ignore_eos), prompts in groups.items():
        prompts = sorted(prompts)
        args = [str(BUILD / "llmq"), "generate", "--model", str(model), "--json", "--max-tokens", str(mt),
                "--temperature", str(temp)]
        if backend:
            args += ["--backend", backend]
        if top_p is not None:
            args += ["--top-p", str(top_p)]
        if seed is not None:
            args += ["--seed", str(seed)]
        if ignore_eos:
            args.append("--ignore-eos")
        for p in prompts:
            args += ["--prompt", p]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
        for line in out.splitlines():
            o = json.loads(line)
            r = {"prompt": prompts[o["index"]], "max_tokens": mt, "temperature": temp}
            if top_p is not None:
                r["top_p"] = top_p
            if seed is not None:
                r["seed"] = seed
            if ignore_eos:
                r["ignore_eos"] = True
            _baseline_cache[key(r, backend)] = (o["text"], o["finish_reason"], o["completion_tokens"])
    return {key(r): _baseline_cache[key(r, backend)] for r in reqs}


def key(req, backend=None):
    k = {k: req[k] for k in ("prompt", "max_tokens", "temperature", "top_p", "seed", "ignore_eos")
         if k in req and req[k] is not None and req[k] is not False}
    if backend:
        k["backend"] = backend
    return json.dumps(k, sort_keys=True)


def check_stream(r, jid, expect=None):
    """The job's output stream in Redis: seq 0..n-1 without gap or repeat,
    exactly one final chunk and it is the last; with expect = (text,
    finish, n_tokens), the text, the finish reason and the ids' count equal
    it.  Returns the chunks."""
    cs = chunks(r, jid)
    seqs = [c["seq"] for c in cs]
    bad = next((i for i, q in enumerate(seqs) if q != i), None)
    assert bad is None, f"{jid}: chunk {bad} has seq {seqs[bad]} ({len(seqs)} chunks, seqs {seqs[:bad + 3][-8:]}...)"
    finals = [c for c in cs if c.get("finish")]
    assert len(finals) == 1 and cs[-1].get("finish"), f"{jid}: {len(finals)} final chunks"
    if expect is not None:
        text, finish, n = expect
        got = "".join(c["text"] for c in cs)
        assert got == text, f"{jid}: text differs from the uninterrupted run:\n{got!r}\n{text!r}"
        assert cs[-1]["finish"] == finish, f"{jid}: finish {cs[-1]['finish']} != {finish}"
        assert sum(len(c["ids"]) for c in cs) == n, f"{jid}: {sum(len(c['ids']) for c in cs)} ids != {n}"
    return cs


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def jobs(r, jids):
    """{id: job hash} for many jobs in one round trip."""
    p = r.pipeline(transaction=False)
    for j in jids:
        p.hgetall(f"llmq:job:{{{j}}}")
    return {j: {k.decode(): v.decode() for k, v in h.items()} for j, h in zip(jids, p.execute())}


def wait_final(r, jids, timeout):
    left = set(jids)

    def done():
        for j, h in jobs(r, list(left)).items():
            if h.get("state") in FINAL:
                left.discard(j)
        return not left
    try:
        wait_until(done, timeout, "jobs to end")
    except AssertionError:
        raise AssertionError(f"{len(left)} jobs never ended, e.g. {sorted(left)[:5]}: "
                             f"{[job(r, j) for j in sorted(left)[:3]]}") from None


def recovery(name, seconds, what):
    """One measured recovery time: printed (pytest -s shows it) and appended
    to $LLMQ_FAULT_FIGURES when set.  None: it never happened in the run
    (say so rather than invent a figure)."""
    took = "none needed" if seconds is None else f"{seconds:.2f} s"
    _figure(f"RECOVERY {name}: {took} ({what})")


def _figure(line):
    print("\n" + line, flush=True)
    path = os.environ.get("LLMQ_FAULT_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class Stopwatch(threading.Thread):
    """Times a recovery while the test goes on: from its creation, or t0 (a
    time.monotonic() of the fault's end, or the kill) to the first time
    pred() holds, polled every 20 ms in a thread of its own.  took() waits
    for it: seconds, or None if pred never held in time."""

    def __init__(self, pred, timeout=300, t0=None):
        super().__init__(daemon=True)
        self.pred, self.timeout = pred, timeout
        self.t0 = time.monotonic() if t0 is None else t0
        self.seconds = None
        self.start()

    def run(self):
        while time.monotonic() - self.t0 < self.timeout:
            try:
                if self.pred():
                    self.seconds = time.monotonic() - self.t0
                    return
            except Exception:  # Redis away for the moment: not yet
                pass
            time.sleep(0.02)

    def took(self, timeout=None):
        self.join(self.timeout if timeout is None else timeout)
        return self.seconds


def running(r, jids=None):
    """{id: attempts} of the jobs among jids (default: every job in Redis) running now."""
    if jids is None:
        jids = [k.decode()[len("llmq:job:{"):-1] for k in r.scan_iter("llmq:job:{*}", count=1000)]
    return {j: int(h.get("attempts", 0)) for j, h in jobs(r, [j for j in jids if j]).items()
            if h.get("state") == "running"}


class Moving(threading.Thread):
    """Times how long the streams of jobs stalled by a fault take to move
    again, from now (or t0, a time.monotonic() of the fault's end or the
    kill): to the first of them and to every one of them (the last may wait
    for a free batch slot) having a chunk written since now (its stream
    entry id, Redis' clock in ms, is at least now's: Redis runs on this
    machine).  Polled every 20 ms in a thread of its own; jobs that ended
    before now are left out.  report() prints a RECOVERY line.

    What a stopped or dead writer had already sent still lands after the
    fault's start: with settle=S (a worker stopped or killed, Redis up) the
    streams' last entries S seconds after t0 are the mark to pass instead;
    with attempts={id: attempts before the fault} (Redis paused: the
    worker's last writes wait in its socket until SIGCONT) a chunk counts
    only once its job was admitted again."""

    def __init__(self, url, jids, t0=None, settle=0.0, attempts=None, timeout=300):
        super().__init__(daemon=True)
        self.since = int(time.time() * 1000)
        self.t0 = time.monotonic() if t0 is None else t0
        self.url, self.jids, self.timeout = url, list(jids), timeout
        self.settle, self.attempts = settle, attempts
        self.first = self.every = None
        self.n = 0
        self.start()

    def _last(self, r):
        p = r.pipeline(transaction=False)
        for j in self.jids:
            p.xrevrange(f"llmq:job:{{{j}}}:out", count=1)
            p.hmget(f"llmq:job:{{{j}}}", "state", "attempts")
        got = p.execute()
        ids = [tuple(map(int, ls[0][0].split(b"-"))) if ls else (0, 0) for ls in got[::2]]
        return ids, [(st.decode() if st else "", int(at or 0)) for st, at in got[1::2]]

    def run(self):
        r = connect(self.url)  # its commands wait for a paused Redis: the thread, not the test
        mark = None
        if self.settle:
            time.sleep(max(0.0, self.t0 + self.settle - time.monotonic()))
            mark = self._last(r)[0]
        while time.monotonic() - self.t0 < self.timeout and self.every is None:
            try:
                ids, hs = self._last(r)
            except Exception:  # Redis away for the moment: not yet
                time.sleep(0.02)
                continue
            moved = []
            for k, (j, i, (st, at)) in enumerate(zip(self.jids, ids, hs)):
                new = i > mark[k] if mark else i[0] >= self.since
                if self.attempts is not None and at <= self.attempts.get(j, 0):
                    new = False
                if new or st not in FINAL:  # ended before the fault: not stalled by it
                    moved.append(new)
            now, self.n = time.monotonic() - self.t0, len(moved)
            if any(moved) and self.first is None:
                self.first = now
            if all(moved):
                self.every = now
            time.sleep(0.02)

    def report(self, name, cause):
        self.join(self.timeout)
        if self.every is not None and not self.n:
            return recovery(name, None, f"{cause}: no stream was left stalled")
        took = "never" if self.every is None else f"{self.first:.2f} s / {self.every:.2f} s"
        _figure(f"RECOVERY {name}: {took} ({cause} -> first / every one of its {self.n} stalled streams "
                "moving again)")


def check_clients(r, clients, expect):
    """Every client ended with the text and finish reason of an
    uninterrupted run; a jobs client that never resumed read seq 0..n-1; the
    job's output stream is clean and holds that text; the job is done."""
    for c in clients:
        assert not c.is_alive(), f"client of job {c.jid} still waiting"
        assert c.exc is None, f"client of job {c.jid}: {c.exc!r} (errors: {c.errors})"
        text, finish, n = expect[key(c.req)]
        assert c.text == text, f"{c.kind} client of job {c.jid} got a different text ({c.errors})"
        assert c.finish == finish, (c.jid, c.finish, finish)
        if c.kind == "jobs" and not c.resumes:
            assert c.seqs == list(range(len(c.seqs))), (c.jid, c.seqs)
        check_stream(r, c.jid, (text, finish, n))  # no chunk twice, none missing
        assert job(r, c.jid)["state"] == "done"


def http_req(port, method, path, body=None, headers=None, timeout=30):
    """(status, lowercase headers, body bytes)"""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers=dict({"Content-Type": "application/json"}, **(headers or {})))
        resp = c.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        c.close()


def readyz(port):
    try:
        return http_req(port, "GET", "/readyz", timeout=5)[0]
    except OSError:
        return None


def sse_lines(resp):
    """Events of an SSE response as dicts {field: value}; comments dropped."""
    cur = {}
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if cur:
                yield cur
                cur = {}
            continue
        if line.startswith(":"):
            continue
        k, _, v = line.partition(":")
        cur[k] = cur.get(k, "") + v[1:] if v.startswith(" ") else cur.get(k, "") + v
    if cur:
        yield cur


class Client(threading.Thread):
    """One user of the gateway: submits one request (retrying a 503 while
    Redis is away, as Retry-After asks) and reads its answer as SSE, either
    /v1/completions with stream: true ("openai") or POST /v1/jobs and then
    GET /v1/jobs/{id}/events ("jobs"), or as one JSON answer of
    /v1/completions ("openai-plain").  Whatever breaks (the connection, an
    error event), it resumes from the job events endpoint with Last-Event-ID
    until the final chunk, on resume_port (another gateway) when given.
    cut() breaks the stream being read from the client's side (a client
    whose network went away): it reconnects at once with Last-Event-ID,
    retrying 503s.  Fields after join: jid, text,
    finish, seqs, resumes, errors, submit_503, and gaps: for each resume,
    the seconds from the break to the events stream answering 200 again."""

    def __init__(self, port, model, req, kind, timeout=300, resume_port=None):
        super().__init__(daemon=True)
        self.port, self.model, self.req, self.kind = port, model, req, kind
        self.resume_port = resume_port or port
        self.timeout = timeout
        self.conn = None
        self.jid = None
        self.text = ""
        self.finish = None
        self.seqs = []
        self.resumes = 0
        self.errors = []
        self.submit_503 = 0
        self.gaps = []
        self._broke = None
        self.exc = None

    def run(self):
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.exc = e

    def _post(self, path, body):
        deadline = time.time() + self.timeout
        while True:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                resp = c.getresponse()
            except OSError as e:
                c.close()
                self.errors.append(f"POST {path}: {e}")
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if resp.status == 503:
                assert resp.getheader("Retry-After"), "503 without Retry-After"
                resp.read()
                c.close()
                self.submit_503 += 1
                assert time.time() < deadline, "Redis never came back"
                time.sleep(0.2)
                continue
            return c, resp

    def _run(self):
        body = dict(self.req, model=self.model)
        if self.kind == "openai-plain":
            c, resp = self._post("/v1/completions", body)
            data = resp.read()
            c.close()
            assert resp.status == 200, (resp.status, data)
            o = json.loads(data)
            self.jid = o["id"].split("-", 1)[1]
            self.text, self.finish = o["choices"][0]["text"], o["choices"][0]["finish_reason"]
            return
        if self.kind == "openai":
            c, resp = self._post("/v1/completions", dict(body, stream=True))
            assert resp.status == 200, (resp.status, resp.read())
            done = False
            try:
                for ev in sse_lines(resp):
                    data = ev.get("data", "")
                    if data == "[DONE]":
                        done = True
                        break
                    o = json.loads(data)
                    if "error" in o:
                        self.errors.append(f"error event: {o['error']}")
                        break
                    if self.jid is None:
                        self.jid = o["id"].split("-", 1)[1]
                    ch = o["choices"][0]
                    self.text += ch["text"]
                    self.finish = ch["finish_reason"] or self.finish
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"completions stream broke: {e}")
            finally:
                c.close()
            if done:
                return
            # the stream broke: the response id names the job; read it all again
            assert self.jid, "the completions stream broke before its first chunk"
            self._broke = time.monotonic()
            self.text, self.finish = "", None
            self.resumes += 1
            self._follow(None)
            return
        c, resp = self._post("/v1/jobs", body)
        assert resp.status == 202, (resp.status, resp.read())
        self.jid = json.loads(resp.read())["id"]
        c.close()
        self._follow(None)

    def _follow(self, last):
        """GET /v1/jobs/{id}/events from after `last` to the final chunk."""
        deadline = time.time() + self.timeout
        while True:
            assert time.time() < deadline, f"job {self.jid}: no final chunk after {self.timeout} s"
            hdr = {"Last-Event-ID": str(last)} if last is not None else {}
            port = self.resume_port if self.resumes else self.port
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            try:
                c.request("GET", f"/v1/jobs/{self.jid}/events", headers=hdr)
                self.conn = c
                resp = c.getresponse()
                if resp.status == 503:
                    resp.read()
                    time.sleep(0.2)
                    continue
                assert resp.status == 200, (resp.status, resp.read())
                if self._broke is not None:
                    self.gaps.append(time.monotonic() - self._broke)
                    self._broke = None
                for ev in sse_lines(resp):
                    if "id" not in ev:
                        continue
                    o = json.loads(ev["data"])
                    seq = int(ev["id"])
                    assert seq == o["seq"] == (last + 1 if last is not None else 0), \
                        f"job {self.jid}: event {seq} after {last}"
                    last = seq
                    self.seqs.append(seq)
                    self.text += o["text"]
                    if o.get("finish"):
                        self.finish = o["finish"]
                        return
                else:
                    self.errors.append("events stream ended without a final chunk")
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"events stream broke: {e}")
            finally:
                self.conn = None
                c.close()
            if self._broke is None:
                self._broke = time.monotonic()
            self.resumes += 1

    def cut(self):
        """Break the events stream now being read (if any); True if one was."""
        c = self.conn
        if c is None or c.sock is None:
            return False
        import socket
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        return True


def log_text(path):
    return pathlib.Path(path).read_text(errors="replace")


def stop_all(*things):
    """Cleanup that always completes: cut clients' streams, stop gateways,
    workers and redis-servers in order; whatever does not stop (a gateway
    still draining after a failed test) is killed, so no process outlives
    the test."""
    for t in things:
        try:
            if isinstance(t, Client):
                t.cut()
            else:
                t.stop()
        except Exception:
            p = getattr(t, "proc", None)
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
