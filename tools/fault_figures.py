#!/usr/bin/env python3
"""Measure the rows of docs/operations.md's fault report (issue 23) that the
chaos suites do not: each scenario runs once against real processes
(redis-server, llmq-worker on the stories260K model, llmq-gateway, HTTP
clients) and prints its row's figures:

    ROW <scenario>: load=... | faults=... | completed=N failed=M |
        bytes_lost=B | duplicated=D | recovery=...

plus DETAIL lines (latencies, CPU, log volume).  `chaos` runs tests/chaos
once with LLMQ_FAULT_FIGURES set and prints their RECOVERY lines (restart,
pause, competing workers, OOM, drain, Sentinel failover).

    .venv/bin/python tools/fault_figures.py [--build DIR] [SCENARIO ...]
    scenarios: metrics-flood emfile slowloris tenant-flood redis-full output-trim chaos (default: all)

A request counts as completed when its client read the whole answer; its
bytes lost are the bytes of the uninterrupted run's text (`llmq generate`,
tests/chaos/chaosutil.baseline) that it did not get; duplicated chunks are
repeated seqs or extra final chunks in its output stream in Redis.
Seconds here are wall time on whatever machine runs it: the report names
the machine.  Not part of `make test` (slowloris alone holds 30 s)."""
import argparse
import http.client
import json
import os
import pathlib
import resource
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def setup_env(build):
    b = pathlib.Path(build)
    os.environ["LLMQ_BUILD"] = str(b if b.is_absolute() else ROOT / b)
    os.environ["LLMQ_ROOT"] = str(ROOT)
    if (ROOT.parent / "shared").is_dir():
        os.environ.setdefault("LLMQ_SHARED", str((ROOT.parent / "shared").resolve()))
    for d in ("tests", "tests/e2e", "tests/chaos"):
        sys.path.insert(0, str(ROOT / d))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds hundreds of sockets


BAD = []  # rows with a failed request or a duplicated chunk, a chaos run that failed: the exit status says so


def row(name, load, faults, completed, failed, lost, dups, rec):
    if failed or dups:
        BAD.append(name)
    print(f"ROW {name}: load={load} | faults={faults} | completed={completed} failed={failed} | "
          f"bytes_lost={lost} | duplicated={dups} | recovery={rec}", flush=True)


def detail(name, text):
    print(f"DETAIL {name}: {text}", flush=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Fleet:
    """redis-server, one llmq-worker (stories260K) and one llmq-gateway."""

    def __init__(self, tmp, worker_args=(), gw_args=(), gw_preexec=None):
        from chaosutil import model_dir
        from llmqtest import RedisServer, free_port
        self.tmp = pathlib.Path(tmp)
        self.model = model_dir()
        self.w = self.gw = None
        self.srv = RedisServer(self.tmp, free_port()).start()
        try:
            self._start(worker_args, gw_args, gw_preexec)
        except BaseException:
            self.stop()
            raise

    def _start(self, worker_args, gw_args, gw_preexec):  # stopped by __init__ if it fails half way
        from chaosutil import connect
        from llmqtest import free_port
        from worker_util import Worker
        self.r = connect(self.srv.url)
        self.wport = free_port()
        self.w = Worker(self.model, self.srv.url, "stories", self.tmp / "w.log", "--max-num-seqs", 16,
                        "--metrics-port", self.wport, *worker_args)
        self.port = free_port()
        self.gw_log = self.tmp / "gw.log"
        with open(self.gw_log, "w") as log:
            self.gw = subprocess.Popen([str(pathlib.Path(os.environ["LLMQ_BUILD"]) / "llmq-gateway"), "--redis",
                                        self.srv.url, "--listen", f"127.0.0.1:{self.port}", "--models", "stories",
                                        *map(str, gw_args)], stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=gw_preexec)
        self.wait(lambda: self.status("GET", "/readyz") == 200, 20, "the gateway's /readyz")
        self.wait(lambda: self.r.hlen("llmq:workers") >= 1, 30, "the worker's heartbeat")

    def status(self, method, path, body=None, headers=None, timeout=10):
        try:
            return self.req(method, path, body, headers, timeout)[0]
        except OSError:
            return None

    def req(self, method, path, body=None, headers=None, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers=dict({"Content-Type": "application/json"}, **(headers or {})))
            resp = c.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            c.close()

    @staticmethod
    def wait(pred, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self):
        if self.gw is not None and self.gw.poll() is None:
            self.gw.terminate()
            self.gw.wait(30)
        if self.w is not None:
            self.w.stop()
        self.srv.stop()


def audit(r, results, expect):
    """results: [(jid or None, req, text got or None)] -> (completed, failed, bytes lost, duplicated chunks)."""
    from chaosutil import key
    from worker_util import chunks
    completed = failed = lost = dups = 0
    for jid, req, got in results:
        want = expect[key(req)][0].encode()
        g = (got or "").encode()
        if got is not None and g == want:
            completed += 1
        else:
            failed += 1
            same = 0
            while same < min(len(g), len(want)) and g[same] == want[same]:
                same += 1
            lost += len(want) - same
        if jid:
            cs = chunks(r, jid)
            seqs = [c["seq"] for c in cs]
            dups += len(seqs) - len(set(seqs)) + max(0, sum(1 for c in cs if c.get("finish")) - 1)
    return completed, failed, lost, dups


def run_clients(port, reqs, kinds=("openai", "jobs")):
    """Chaos Clients (SSE completions and job events), started now; join with finish_clients."""
    from chaosutil import Client
    cs = [Client(port, "stories", q, kinds[i % len(kinds)], timeout=300) for i, q in enumerate(reqs)]
    for c in cs:
        c.start()
    return cs


def client_results(cs):
    return [(c.jid, c.req, c.text if (c.exc is None and not c.is_alive()) else None) for c in cs]


def latency_clients(port, reqs, headers=None, refused=None):
    """Completions (/v1/completions, one JSON answer), each in its own thread, timing the whole answer:
    (threads, [(req, text or None, seconds, jid, status)]).  Given a list `refused`, a 503 is retried after
    its Retry-After (at most 1 s), as a client should, and so is a connection reset (a 503's close that
    raced the request); each refusal appends the request's index to `refused`."""
    out = [None] * len(reqs)
    retry_503 = refused is not None

    def one(i, q):
        t0 = time.monotonic()
        try:
            while True:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                try:
                    c.request("POST", "/v1/completions", body=json.dumps(dict(q, model="stories")),
                              headers=dict({"Content-Type": "application/json"}, **(headers or {})))
                    resp = c.getresponse()
                    b = resp.read()
                except (ConnectionResetError, BrokenPipeError):
                    if not retry_503:
                        raise
                    refused.append(i)  # refused by a close that raced the request's bytes
                    time.sleep(1.0)
                    continue
                finally:
                    c.close()
                if resp.status == 503 and retry_503 and resp.getheader("Retry-After"):
                    refused.append(i)
                    time.sleep(min(1.0, float(resp.getheader("Retry-After"))))
                    continue
                break
            if resp.status != 200:
                out[i] = (q, None, time.monotonic() - t0, None, resp.status)
                return
            o = json.loads(b)
            out[i] = (q, o["choices"][0]["text"], time.monotonic() - t0, o["id"].split("-", 1)[1], 200)
        except OSError as e:
            out[i] = (q, None, time.monotonic() - t0, None, str(e))
    ts = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(reqs)]
    for t in ts:
        t.start()
    return ts, out


# ---------------------------------------------------------------------------------------------------------------
def metrics_flood(tmp):
    """Defect 1: 50 silent connections every 0.5 s to the worker's --metrics-port while completions run."""
    from chaosutil import baseline, spec
    f = Fleet(tmp)
    try:
        reqs = [spec(i, max_tokens=(64, 96, 128)) for i in range(16)]
        expect = baseline(f.model, reqs)
        ts, quiet = latency_clients(f.port, reqs)
        for t in ts:
            t.join()
        stop, socks = threading.Event(), []

        def hold():
            while not stop.is_set():
                for _ in range(50):
                    try:
                        socks.append(socket.create_connection(("127.0.0.1", f.wport), timeout=1))
                    except OSError:
                        pass
                stop.wait(0.5)
        h = threading.Thread(target=hold)
        h.start()
        f.wait(lambda: len(socks) >= 150, 30, "150 silent connections")
        t0 = time.monotonic()
        ts, busy = latency_clients(f.port, reqs)
        mlat = []
        while any(t.is_alive() for t in ts):
            m0 = time.monotonic()
            c = http.client.HTTPConnection("127.0.0.1", f.wport, timeout=30)
            c.request("GET", "/metrics")
            ok = c.getresponse().status == 200
            c.close()
            mlat.append(time.monotonic() - m0 if ok else float("inf"))
            time.sleep(0.2)
        wall = time.monotonic() - t0
        held = len(socks)
        stop.set()
        h.join()
        for s in socks:
            s.close()
        ts, after = latency_clients(f.port, reqs)
        for t in ts:
            t.join()
        res = [(jid, q, text) for q, text, _, jid, _ in busy + after]
        comp, fail, lost, dups = audit(f.r, res, expect)
        detail("metrics-flood", f"16 completions (64-128 tokens) quiet: slowest {max(x[2] for x in quiet):.2f} s "
                                f"before the flood, {max(x[2] for x in after):.2f} s after it; "
                                f"flooded: slowest {max(x[2] for x in busy):.2f} s, all in {wall:.2f} s with {held} "
                                f"silent connections held; /metrics meanwhile answered {len(mlat)} times, "
                                f"slowest {max(mlat):.3f} s")
        row("metrics-flood", "16 concurrent completions during the flood (and 16 after)",
            f"50 silent connections to --metrics-port every 0.5 s ({held} held by the end)", comp, fail, lost, dups,
            f"none needed: served throughout (slowest completion {max(x[2] for x in busy):.2f} s flooded, "
            f"{max(x[2] for x in quiet):.2f} s quiet)")
    finally:
        f.stop()


def emfile(tmp):
    """Defect 2: the gateway at its descriptor limit (RLIMIT_NOFILE 64), 100 connections held, with the default
    --max-connections (limit less a reserve: 503 past it) and with --max-connections 0 (accept meets EMFILE)."""
    from chaosutil import baseline, spec
    for cap in ("default", "0"):
        sub = pathlib.Path(tmp) / f"cap-{cap}"
        sub.mkdir()

        def lim():
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        f = Fleet(sub, gw_args=() if cap == "default" else ("--max-connections", "0"), gw_preexec=lim)
        try:
            reqs = [spec(i, max_tokens=(24, 48)) for i in range(8)]
            expect = baseline(f.model, reqs)
            held = [socket.create_connection(("127.0.0.1", f.port), timeout=5) for _ in range(100)]
            time.sleep(0.5)
            log0, cpu0, t0 = f.gw_log.stat().st_size, cpu_seconds(f.gw.pid), time.monotonic()
            # a completion from a client past the limit meanwhile (it retries a 503 after its Retry-After)
            refused = []
            ts, late = latency_clients(f.port, reqs[:1], refused=refused)
            time.sleep(2.0)
            cpu = (cpu_seconds(f.gw.pid) - cpu0) / (time.monotonic() - t0)
            grown = f.gw_log.stat().st_size - log0
            # every held connection asks at once; what answers within 1.5 s
            answers = {"200": 0, "503": 0, "closed": 0, "no answer": 0}
            pending = {}
            for s in held:
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.setblocking(False)
                    pending[s] = True
                except OSError:
                    answers["closed"] += 1
            deadline = time.monotonic() + 1.5
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select(list(pending), [], [], 0.1)
                for s in ready:
                    try:
                        got = s.recv(65536)
                        k = "closed" if not got else got[9:12].decode()
                    except OSError:
                        k = "closed"
                    answers[k] = answers.get(k, 0) + 1
                    del pending[s]
            answers["no answer"] += len(pending)
            t_close = time.monotonic()
            for s in held:
                s.close()
            first_ok = None
            while time.monotonic() - t_close < 30:
                if f.status("GET", "/healthz", timeout=2) == 200:
                    first_ok = time.monotonic() - t_close
                    break
                time.sleep(0.02)
            ts2, after = latency_clients(f.port, reqs[1:])
            for t in ts + ts2:
                t.join()
            res = [(jid, q, text) for q, text, _, jid, _ in late + after]
            comp, fail, lost, dups = audit(f.r, res, expect)
            log_lines = f.gw_log.read_text(errors="replace").splitlines()
            detail(f"emfile cap={cap}", f"100 connections held against RLIMIT_NOFILE 64: gateway CPU {cpu:.1%} of a "
                   f"core over 2 s, log grew {grown} bytes ({len(log_lines)} lines in all); the held ones answered "
                   f"{answers}; a completion sent meanwhile: refused {len(refused)} times (503 or reset), then "
                   f"{late[0][4]} {late[0][2] - (t_close - t0):+.2f} s from the close")
            row(f"emfile-cap-{cap}", "100 held connections + 1 completion meanwhile, 7 after",
                f"RLIMIT_NOFILE 64 on the gateway, --max-connections {cap}", comp, fail, lost, dups,
                f"{first_ok:.2f} s from the held connections closing to /healthz 200" if first_ok is not None
                else "never within 30 s")
        finally:
            f.stop()


def slowloris(tmp):
    """Defect 3: 100 connections trickling a header byte a second; --request-timeout 30 (the default)."""
    from chaosutil import baseline, spec
    f = Fleet(tmp)
    try:
        reqs = [spec(i, max_tokens=(64, 96, 128)) for i in range(24)]
        expect = baseline(f.model, reqs)
        slow = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", f.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            s.setblocking(False)
            slow.append([s, time.monotonic(), None, b""])
        # completions while they trickle: 8 at once, 8 after 10 s, 8 after 20 s
        batches = []
        t_start = time.monotonic()
        for k in range(3):
            while time.monotonic() - t_start < 10 * k:
                time.sleep(0.1)
            batches.append(latency_clients(f.port, reqs[8 * k:8 * k + 8]))
        while any(x[2] is None for x in slow) and time.monotonic() - t_start < 60:
            for x in slow:
                if x[2] is not None:
                    continue
                try:
                    got = x[0].recv(65536)
                    if not got:
                        x[2] = time.monotonic() - x[1]
                    x[3] += got
                    if x[3]:
                        x[2] = time.monotonic() - x[1]
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    x[2] = time.monotonic() - x[1]
                    continue
                try:
                    x[0].send(b"a")
                except OSError:
                    x[2] = time.monotonic() - x[1]
            time.sleep(1.0)
        for ts, _ in batches:
            for t in ts:
                t.join()
        cut = [x[2] for x in slow if x[2] is not None]
        got408 = sum(1 for x in slow if x[3].startswith(b"HTTP/1.1 408"))
        for x in slow:
            x[0].close()
        res = [(jid, q, text) for _, out in batches for q, text, _, jid, _ in out]
        lat = [s for _, out in batches for _, text, s, _, _ in out if text is not None]
        comp, fail, lost, dups = audit(f.r, res, expect)
        detail("slowloris", f"{len(cut)} of 100 slow connections cut, after {min(cut):.1f}-{max(cut):.1f} s "
               f"({got408} with a 408); the 24 completions meanwhile took {min(lat):.2f}-{max(lat):.2f} s")
        row("slowloris", "100 slow connections + 24 completions (8 at 0, 10, 20 s)",
            "a header byte a second on each, --request-timeout 30", comp, fail, lost, dups,
            f"none needed: others served throughout; slow ones cut at {max(cut):.1f} s")
    finally:
        f.stop()


def tenant_flood(tmp):
    """Defects 4 and 8: key A floods POST /v1/jobs (8 threads, 5 s), key B's completions are timed meanwhile."""
    from chaosutil import baseline, spec, wait_final
    tmp = pathlib.Path(tmp)
    ka, kb = "sk-flood-a-0123456789", "sk-other-b-9876543210"
    (tmp / "keys").write_text(f"{ka}\n{kb}\n")
    f = Fleet(tmp, gw_args=("--api-key-file", tmp / "keys"))
    try:
        flood_req = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
        reqs = [spec(i, max_tokens=(32, 48, 64)) for i in range(8)]
        expect = baseline(f.model, reqs + [flood_req])
        auth_b = {"Authorization": f"Bearer {kb}"}
        ts, quiet = latency_clients(f.port, reqs, headers=auth_b)
        for t in ts:
            t.join()
        stop = threading.Event()
        counts, jids, lock = {}, [], threading.Lock()

        def flood():
            c = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
            while not stop.is_set():
                try:
                    c.request("POST", "/v1/jobs", body=json.dumps(dict(flood_req, model="stories")),
                              headers={"Content-Type": "application/json", "Authorization": f"Bearer {ka}"})
                    resp = c.getresponse()
                    b = resp.read()
                except (OSError, http.client.HTTPException):
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
                    continue
                with lock:
                    counts[resp.status] = counts.get(resp.status, 0) + 1
                    if resp.status == 202:
                        jids.append(json.loads(b)["id"])
            c.close()
        fl = [threading.Thread(target=flood) for _ in range(8)]
        for t in fl:
            t.start()
        f.wait(lambda: counts.get(429, 0) > 0, 60, "key A to meet its --key-max-jobs")
        ts, busy = latency_clients(f.port, reqs, headers=auth_b)
        for t in ts:
            t.join()
        stop.set()
        for t in fl:
            t.join()
        # scoping: B cannot see or cancel A's jobs
        seen = sum(f.status("GET", f"/v1/jobs/{j}", headers=auth_b) != 404 for j in jids[:50])
        wait_final(f.r, jids, 600)
        res = [(jid, q, text) for q, text, _, jid, _ in busy]
        from worker_util import chunks
        res += [(j, flood_req, "".join(c["text"] for c in chunks(f.r, j))) for j in jids]
        comp, fail, lost, dups = audit(f.r, res, expect)
        bl = [x[2] for x in busy if x[1] is not None]
        ql = [x[2] for x in quiet if x[1] is not None]
        detail("tenant-flood", f"key A: {sum(counts.values())} submissions, {counts}; key B's 8 completions quiet: "
               f"p50 {pct(ql, .5):.2f} s max {max(ql):.2f} s, during the flood: p50 {pct(bl, .5):.2f} s "
               f"max {max(bl):.2f} s ({len(bl)}/8 served); B saw {seen} of 50 of A's jobs (want 0)")
        row("tenant-flood", "8 completions of key B", f"key A floods POST /v1/jobs from 8 connections "
            f"({sum(counts.values())} tries: {counts.get(202, 0)} accepted, {counts.get(429, 0)} 429 key_limit)",
            comp, fail, lost, dups, f"none needed: B served throughout (slowest {max(bl):.2f} s, quiet "
            f"{max(ql):.2f} s)")
    finally:
        f.stop()


def redis_full(tmp):
    """Defect 14: Redis at maxmemory (noeviction) for 3 s while submissions and 16 streams run."""
    from chaosutil import Stopwatch, baseline, spec
    f = Fleet(tmp, worker_args=("--claim-idle-ms", 1000))
    try:
        reqs = [spec(i, max_tokens=(96, 160, 240)) for i in range(16)]
        more = [spec(100 + i, max_tokens=(16, 24)) for i in range(400)]
        expect = baseline(f.model, reqs + more)
        cs = run_clients(f.port, reqs)
        f.wait(lambda: sum(1 for _ in f.r.scan_iter("llmq:job:*:out", count=1000)) >= 8, 60, "8 streams")
        log, stop, ready = [], threading.Event(), []

        def submitter(k):
            i = k
            while not stop.is_set() and i < len(more):
                try:
                    st, h, b = f.req("POST", "/v1/jobs", dict(more[i], model="stories"))
                except OSError as e:
                    st, h, b = str(e), {}, b""
                log.append((time.monotonic(), st, h.get("retry-after"), more[i],
                            json.loads(b)["id"] if st == 202 else None))
                i += 4
                time.sleep(0.05)

        def readyz():
            while not stop.is_set():
                ready.append((time.monotonic(), f.status("GET", "/readyz", timeout=5)))
                time.sleep(0.05)
        th = [threading.Thread(target=submitter, args=(k,)) for k in range(4)] + [threading.Thread(target=readyz)]
        for t in th:
            t.start()
        time.sleep(1.0)
        t_full = time.monotonic()
        f.r.config_set("maxmemory", "1")
        time.sleep(3.0)
        f.r.config_set("maxmemory", "0")
        t_end = time.monotonic()
        ready_w = Stopwatch(lambda: f.status("GET", "/readyz", timeout=5) == 200, t0=t_end)
        sub_w = Stopwatch(lambda: any(t >= t_end and st == 202 for t, st, *_ in list(log)), t0=t_end)
        rt, st_ = ready_w.took(30), sub_w.took(30)
        time.sleep(1.0)
        stop.set()
        for t in th:
            t.join()
        for c in cs:
            c.join(300)
        accepted = [(jid, q) for _, st, _, q, jid in log if st == 202]
        from chaosutil import wait_final
        from worker_util import chunks
        wait_final(f.r, [j for j, _ in accepted], 300)
        res = client_results(cs) + [(j, q, "".join(c["text"] for c in chunks(f.r, j))) for j, q in accepted]
        comp, fail, lost, dups = audit(f.r, res, expect)
        during = [x for x in log if t_full <= x[0] <= t_end]
        kinds = {}
        for _, st, ra, _, _ in during:
            kinds[st] = kinds.get(st, 0) + 1
        no_ra = sum(1 for _, st, ra, _, _ in during if st == 503 and not ra)
        nr = [st for t, st in ready if t_full + 0.2 <= t <= t_end]
        detail("redis-full", f"submissions while full: {kinds} ({no_ra} 503s without Retry-After), all of them "
               f"{len(log)}: {sum(1 for x in log if x[1] == 500)} 500s; gateway /readyz while full: "
               f"{nr.count(503)} of {len(nr)} polls 503; after: /readyz 200 in {rt:.2f} s, first 202 in {st_:.2f} s")
        row("redis-full", f"16 SSE streams + 4 submitters (1 job / 50 ms each, {len(log)} submissions)",
            "maxmemory 1 (noeviction) for 3 s", comp, fail + sum(1 for x in log if x[1] not in (202, 503)), lost,
            dups, f"{st_:.2f} s to the first submission accepted, {rt:.2f} s to gateway /readyz 200 "
            "(it holds 503 for 2 s after a refused submission)")
    finally:
        f.stop()


def output_trim(tmp):
    """Defect 16: XTRIM of running jobs' output streams; readers that start after are told what is missing."""
    from chaosutil import baseline, key, spec, wait_final
    f = Fleet(tmp)
    try:
        reqs = [dict(spec(i, max_tokens=(300,)), ignore_eos=True) for i in range(8)]
        expect = baseline(f.model, reqs)
        cs = run_clients(f.port, reqs, kinds=("jobs",))
        f.wait(lambda: all(c.jid for c in cs) and all(f.r.xlen(f"llmq:job:{{{c.jid}}}:out") >= 40 for c in cs),
               120, "8 jobs 40 chunks in")
        trimmed = {}
        for c in cs:
            trimmed[c.jid] = f.r.xtrim(f"llmq:job:{{{c.jid}}}:out", maxlen=10, approximate=False)
        for c in cs:
            c.join(300)
        wait_final(f.r, [c.jid for c in cs], 120)
        told = exact = 0
        lost = 0
        from worker_util import chunks
        for c in cs:
            st, _, b = f.req("GET", f"/v1/jobs/{c.jid}/events", timeout=60)
            events = [e for e in b.decode().split("\n\n") if e.strip()]
            first = dict(line.split(": ", 1) for line in events[0].splitlines() if ": " in line)
            if first.get("event") == "error":
                err = json.loads(first["data"])
                told += err["error"]["code"] == "output_trimmed"
                rec = json.loads(f.req("GET", f"/v1/jobs/{c.jid}")[2])
                exact += (err["missing_from"], err["missing_to"]) == (0, trimmed[c.jid] - 1) and \
                    rec["output_trimmed"] == trimmed[c.jid]
            got = "".join(json.loads(dict(line.split(": ", 1) for line in e.splitlines())["data"])["text"]
                          for e in events[1:])
            want = expect[key(c.req)][0]
            lost += len(want.encode()) - len(got.encode())
            assert want.endswith(got)
        live = audit(f.r, client_results(cs), expect)
        dups = sum(len(s) - len(set(s)) for s in ([x["seq"] for x in chunks(f.r, c.jid)] for c in cs))
        detail("output-trim", f"live readers (reading while the trim happened): {live[0]}/8 whole; readers after: "
               f"{told}/8 got event: error output_trimmed first, {exact}/8 naming exactly the trimmed seqs (and "
               f"GET /v1/jobs/{{id}} output_trimmed the same); the chunks trimmed held {lost} bytes of text")
        row("output-trim", "8 jobs of 300 tokens, read live over SSE, then read again",
            "XTRIM MAXLEN 10 of each output stream 40+ chunks in", f"{live[0]} live + {told} told",
            8 - told, f"{lost} (trimmed by the operator, every reader after told)", dups, "none needed")
    finally:
        f.stop()


def chaos(tmp):
    """tests/chaos once, collecting its RECOVERY lines."""
    figs = pathlib.Path(tmp) / "recovery.txt"
    env = dict(os.environ, LLMQ_FAULT_FIGURES=str(figs), BUILD=os.environ["LLMQ_BUILD"],
               PYTHON=sys.executable, TESTS="chaos")
    p = subprocess.run(["bash", str(ROOT / "tests" / "run.sh")], env=env, capture_output=True, text=True)
    print(p.stdout[-1500:], flush=True)
    if p.returncode:
        BAD.append("chaos")
    if figs.exists():
        print(figs.read_text(), end="", flush=True)


SCENARIOS = {"metrics-flood": metrics_flood, "emfile": emfile, "slowloris": slowloris, "tenant-flood": tenant_flood,
             "redis-full": redis_full, "output-trim": output_trim, "chaos": chaos}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=" ".join(SCENARIOS) + " (default: all)")
    a = ap.parse_args()
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}: {' '.join(SCENARIOS)}")
    setup_env(a.build)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {os.cpu_count()} CPUs, {open('/proc/cpuinfo').read().count('processor')} in /proc/cpuinfo; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for name in a.scenarios or list(SCENARIOS):
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"llmq-fault-{name}-") as tmp:
            SCENARIOS[name](tmp)
        print(f"({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    if BAD:
        print(f"failed requests, duplicated chunks or failed tests in: {' '.join(BAD)}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
