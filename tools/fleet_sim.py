#!/usr/bin/env python3
"""fleet_sim.py — how many tokens one Redis carries: N synthetic worker groups
x M concurrent streams against one real redis-server, through a real
llmq-gateway or straight into Redis (issue 25, docs/benchmarks.md
"Coordination ceiling").

Every process is the real one: redis-server, llmq-gateway, llmq-worker with
the synthetic engine (worker/engine/synth.h: no weights, no compute, a step
sleeps 1/RATE s, so each stream gets RATE tokens/s at most), and
llmq-loadtest as the client (closed loop of M streams, ITL from client-side
timestamps).  For each point of the sweep it starts a fresh fleet, runs the
load for --duration seconds, and reports

  tokens/s delivered to the clients,
  Redis CPU per token: INFO cpu (used_cpu_sys + used_cpu_user) delta / tokens,
  ops/s by command: INFO commandstats deltas,
  gateway CPU per token: /proc/<pid>/stat utime + stime delta / tokens
      (and the workers' and the client's, for the whole machine's share),
  ITL p50/p99 and the ITL added to the synthetic step (ITL - 1000/RATE ms),
  the knee: per path, the first point whose added ITL p99 passes --knee-ms.

Past one Redis (docs/architecture.md "Past one Redis"): --redis-instances K
runs K redis-servers, the load split over --models N models (sim-0 ..;
default N = the largest K of the sweep), model i on instance i % K (the
gateway's --redis-for), each model with its share of the groups and of the
streams (one llmq-loadtest per model, in parallel).  So `--redis-instances
1,2` compares one instance with two at the same fleet and the same load; the
report adds each instance's CPU per token of its own models.

On a machine with few cores the simulator, workers and gateway take the
cores long before one Redis is busy.  --redis-cpu-limit F caps each
redis-server at F of a core (a CPU cgroup of its own, CFS quota over a 10 ms
period, longer below 0.1 core; needs root), so that Redis is the limit at a rate the machine can
drive: then K instances have K times the CPU, as K Redis hosts would.

Usage (from the repository root, after `make`):
  tools/fleet_sim.py --groups 1,2,4 --streams 32 --rate 50 --duration 10
  tools/fleet_sim.py --groups 4 --streams 64 --redis-instances 1,2
  tools/fleet_sim.py --direct --groups 4 --streams 128 --redis-instances 1,2 --redis-cpu-limit 0.05
  tools/fleet_sim.py --groups 4 --streams 16,64,256 --direct    # or --both
  tools/fleet_sim.py --short --json -          # a few seconds: the test's run
Worker options pass through with --worker-arg (repeatable), e.g.
  --worker-arg=--chunk-interval-ms=5
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a live process, in seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


class Proc:
    def __init__(self, args, log):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen([str(a) for a in args], stdout=self.f, stderr=subprocess.STDOUT)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.f.close()

    def tail(self):
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def wait_ok(url, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.p.args[0]} exited {proc.p.returncode}: {proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered 200: {proc.tail()}")


class RedisInfo:
    """A minimal RESP client for INFO (no dependency beyond the standard library)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise OSError("redis closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def info(self, section):
        self.s.sendall(f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode())
        head = self._line()
        if not head.startswith(b"$"):
            raise OSError(f"INFO: {head!r}")
        n = int(head[1:])
        while len(self.buf) < n + 2:
            self.buf += self.s.recv(65536)
        body, self.buf = self.buf[:n], self.buf[n + 2:]
        out = {}
        for line in body.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def cpu(self):
        """(sys, user) CPU seconds of the whole server."""
        i = self.info("cpu")
        return float(i["used_cpu_sys"]), float(i["used_cpu_user"])

    def commands(self):
        """(calls, usec) per command (INFO commandstats: cmdstat_xadd:calls=...,usec=...).
        A script's usec includes the commands it calls, which count their own too."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                f = dict(kv.split("=", 1) for kv in v.split(","))
                out[k[len("cmdstat_"):]] = (int(f["calls"]), int(f["usec"]))
        return out

    def close(self):
        self.s.close()


class CpuCap:
    """A CPU cgroup of its own for one process: `cores` of a core at most
    (cgroup v2 cpu.max, else v1 cpu.cfs_quota_us), removed by close()."""
    PERIOD_US = 10000  # short: the throttling comes in slices of 10 ms, not 100

    def __init__(self, pid, cores, name):
        # the kernel's smallest quota is 1 ms: a longer period below 0.1 core
        period = max(self.PERIOD_US, int(1000 / cores + 0.5))
        quota = int(cores * period + 0.5)
        v2 = pathlib.Path("/sys/fs/cgroup/cgroup.controllers").exists()
        base = pathlib.Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/cpu")
        self.dir = base / f"llmq-fleet-sim-{os.getpid()}-{name}"
        try:
            self.dir.mkdir()
            if v2:
                (self.dir / "cpu.max").write_text(f"{quota} {period}\n")
            else:
                (self.dir / "cpu.cfs_period_us").write_text(f"{period}\n")
                (self.dir / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            (self.dir / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as e:
            self.close()
            raise RuntimeError(f"--redis-cpu-limit: cannot make the CPU cgroup {self.dir} ({e}): needs root and "
                               "the cpu controller") from e

    def close(self):
        try:
            self.dir.rmdir()  # empty once its process has exited
        except OSError:
            pass


def start_redis(tmp, procs, name, caps=None, cpu_limit=0.0):
    """A fresh redis-server: (port, its INFO client)."""
    port = free_port()
    redis_exe = shutil.which("redis-server")
    if not redis_exe:
        raise RuntimeError("redis-server not found: run 'make deps'")
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    rs = Proc([redis_exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", d], tmp / f"{name}.log")
    procs.append(rs)
    if cpu_limit:
        caps.append(CpuCap(rs.p.pid, cpu_limit, name))
    deadline = time.time() + 10
    while True:
        try:
            info = RedisInfo(port)
            info.info("server")
            return port, info
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start: " + rs.tail())
            time.sleep(0.05)


def share(total, parts, i):
    """Part i of total split as evenly as it goes (the first ones get the rest)."""
    return total // parts + (1 if i < total % parts else 0)


def run_point(a, groups, streams, tmp, instances=1):
    """One fleet of `groups` workers and `streams` client streams over
    `instances` Redis instances and a.n_models models: the figures."""
    tmp.mkdir(parents=True, exist_ok=True)
    procs, caps = [], []
    n_models = a.n_models
    models = [a.model] if n_models == 1 else [f"{a.model}-{i}" for i in range(n_models)]
    if groups < n_models or streams < n_models:
        raise RuntimeError(f"{groups} groups and {streams} streams cannot be split over {n_models} models")
    try:
        redis = [start_redis(tmp, procs, f"redis{k}", caps, a.redis_cpu_limit) for k in range(instances)]
        urls = [f"redis://127.0.0.1:{port}" for port, _ in redis]
        home = [i % instances for i in range(n_models)]  # model i on instance home[i]
        workers = []
        for g in range(groups):
            i = g % n_models
            mport = free_port()
            w = Proc([a.build / "llmq-worker", "--model", a.model_dir, "--model-name", models[i], "--redis",
                      urls[home[i]], "--backend", "synthetic", "--synthetic-rate", a.rate, "--max-num-seqs",
                      a.max_num_seqs, "--metrics-port", mport, "--consumer", f"sim-{g}", *a.worker_arg],
                     tmp / f"worker{g}.log")
            procs.append(w)
            workers.append((w, mport))
        for w, mport in workers:
            wait_ok(f"http://127.0.0.1:{mport}/readyz", w)
        gw = None
        targets = [urls[home[i]] for i in range(n_models)]
        if not a.direct:
            gport = free_port()
            routes = []
            for k in range(1, instances):
                on_k = [models[i] for i in range(n_models) if home[i] == k]
                if on_k:
                    routes += ["--redis-for", ",".join(on_k) + "=" + urls[k]]
            gw = Proc([a.build / "llmq-gateway", "--redis", urls[0], *routes, "--listen", f"127.0.0.1:{gport}",
                       "--models", ",".join(models), *a.gateway_arg], tmp / "gateway.log")
            procs.append(gw)
            targets = [f"http://127.0.0.1:{gport}"] * n_models
            wait_ok(targets[0] + "/readyz", gw)
        lts = []
        for i in range(n_models):
            out = tmp / f"loadtest{i}.json"
            lt_args = [a.build / "llmq-loadtest", "--target", targets[i], "--model", models[i], "--concurrency",
                       share(streams, n_models, i), "--prompt-tokens", a.prompt_tokens, "--output-tokens",
                       a.output_tokens, "--json", out, "--quiet", "--metric-percentiles", "50,99", "--timeout", 120]
            if a.requests:
                lt_args += ["--requests", share(a.requests, n_models, i)]
            else:
                lt_args += ["--duration", a.duration]
            if not a.direct:
                lt_args.append("--stream")
            lts.append((lt_args, out))
        # the counters, just before the load and just after it
        cpu0 = [info.cpu() for _, info in redis]
        cmd0 = [info.commands() for _, info in redis]
        gw0 = cpu_seconds(gw.p.pid) if gw else 0.0
        wk0 = sum(cpu_seconds(w.p.pid) for w, _ in workers)
        t0 = time.monotonic()
        running = []
        for i, (lt_args, _) in enumerate(lts):
            lf = open(tmp / f"loadtest{i}.log", "wb")
            running.append((subprocess.Popen([str(x) for x in lt_args], stdout=lf, stderr=subprocess.STDOUT), lf))
        client_cpu, rcs = 0.0, []
        for lt, lf in running:
            _, status, ru = os.wait4(lt.pid, 0)
            lf.close()
            rcs.append(os.waitstatus_to_exitcode(status))
            client_cpu += ru.ru_utime + ru.ru_stime
        wall = time.monotonic() - t0
        cpu1 = [info.cpu() for _, info in redis]
        cmd1 = [info.commands() for _, info in redis]
        gw1 = cpu_seconds(gw.p.pid) if gw else 0.0
        wk1 = sum(cpu_seconds(w.p.pid) for w, _ in workers)
        for _, info in redis:
            info.close()
        js = []
        for i, ((_, out), rc) in enumerate(zip(lts, rcs)):
            if rc != 0 or not out.exists():
                raise RuntimeError(f"llmq-loadtest exited {rc}: "
                                   + (tmp / f"loadtest{i}.log").read_text(errors="replace")[-2000:])
            js.append(json.loads(out.read_text()))
    finally:
        for p in reversed(procs):
            p.stop()
        for c in caps:
            c.close()
    tokens = sum(j["total_output_tokens"] for j in js)
    duration = max(j["duration_s"] for j in js)
    rsys = sum(c1[0] - c0[0] for c0, c1 in zip(cpu0, cpu1))
    ruser = sum(c1[1] - c0[1] for c0, c1 in zip(cpu0, cpu1))
    step_ms = 1000.0 / a.rate
    # ITL: one client's percentiles as they are; several: the median of their
    # p50s and the worst p99 (percentiles do not add up)
    itls = [j["itl_ms"] for j in js if j["itl_ms"]["n"]]
    itl = {"n": sum(x["n"] for x in itls)}
    if itls:
        itl["p50"] = sorted(x["p50"] for x in itls)[len(itls) // 2]
        itl["p99"] = max(x["p99"] for x in itls)
    ttfts = [j["ttft_ms"]["p50"] for j in js if j["ttft_ms"]["n"]]
    ops, usec = {}, {}
    for c0, c1 in zip(cmd0, cmd1):
        for c in c1:
            ops[c] = ops.get(c, 0) + c1[c][0] - c0.get(c, (0, 0))[0]
            usec[c] = usec.get(c, 0) + c1[c][1] - c0.get(c, (0, 0))[1]
    # where Redis's time goes: usec per call and per token of each command
    # (commandstats; the time outside commands, reading and writing sockets, is not in it)
    cost = {c: {"us_per_call": round(usec[c] / ops[c], 3), "us_per_token": round(usec[c] / tokens, 3) if tokens else None}
            for c in sorted(ops, key=lambda c: -usec[c]) if ops[c] > 0}
    ops = {c: round(n / wall, 1) for c, n in sorted(ops.items(), key=lambda kv: -kv[1]) if n > 0}
    per_tok = (lambda s, n=tokens: round(s / n * 1e6, 2) if n else None)
    per_instance = []
    for k in range(instances):
        mine = [i for i in range(n_models) if home[i] == k]
        toks = sum(js[i]["total_output_tokens"] for i in mine)
        cpu = (cpu1[k][0] - cpu0[k][0]) + (cpu1[k][1] - cpu0[k][1])
        per_instance.append({"models": [models[i] for i in mine], "tokens": toks, "redis_cpu_s": round(cpu, 4),
                             "redis_us_per_token": per_tok(cpu, toks),
                             "redis_cpu_share": round(cpu / wall, 3) if wall else None})
    return {
        "groups": groups,
        "streams": streams,
        "via": "redis" if a.direct else "gateway",
        "redis_instances": instances,
        "redis_cpu_limit": a.redis_cpu_limit or None,
        "models": n_models,
        "rate": a.rate,
        "max_num_seqs": a.max_num_seqs,
        "requests": sum(j["issued"] for j in js),
        "completed": sum(j["completed"] for j in js),
        "failed": sum(j["failed"] for j in js),
        "tokens_asked": sum(j["issued"] for j in js) * a.output_tokens,
        "tokens": tokens,
        "token_mismatches": sum(j["token_mismatches"] for j in js),
        "duration_s": round(duration, 3),
        "wall_s": round(wall, 3),
        "tok_s": round(tokens / duration, 1) if duration else None,
        "ideal_tok_s": sum(min(share(streams, n_models, i), share(groups, n_models, i) * a.max_num_seqs)
                           for i in range(n_models)) * a.rate,
        "redis_cpu_s": round(rsys + ruser, 4),
        "redis_us_per_token": per_tok(rsys + ruser),
        "redis_sys_us_per_token": per_tok(rsys),   # the kernel: reads, writes, epoll
        "redis_user_us_per_token": per_tok(ruser),  # commands and scripts
        "per_instance": per_instance,
        "gateway_us_per_token": per_tok(gw1 - gw0) if gw else None,
        "gateway_cpu_share": round((gw1 - gw0) / wall, 3) if gw and wall else None,
        "workers_us_per_token": per_tok(wk1 - wk0),
        "client_us_per_token": per_tok(client_cpu),
        "ops_per_s": ops,
        "command_us": cost,
        "redis_ops_per_token": round(sum(ops.values()) * wall / tokens, 3) if tokens else None,
        "step_ms": round(step_ms, 3),
        "itl_p50_ms": round(itl["p50"], 3) if itl["n"] else None,
        "itl_p99_ms": round(itl["p99"], 3) if itl["n"] else None,
        "added_itl_p50_ms": round(itl["p50"] - step_ms, 3) if itl["n"] else None,
        "added_itl_p99_ms": round(itl["p99"] - step_ms, 3) if itl["n"] else None,
        "ttft_p50_ms": round(sorted(ttfts)[len(ttfts) // 2], 3) if ttfts else None,
    }


def show(p, a):
    if a.json == "-":
        return
    inst = ""
    if p["redis_instances"] > 1:
        inst = " [" + ", ".join(f"{x['redis_us_per_token']} us/tok {x['redis_cpu_share']} core"
                                for x in p["per_instance"]) + "]"
    print(f"groups {p['groups']:3d} streams {p['streams']:5d} redis x{p['redis_instances']} via {p['via']:7s}: "
          f"{p['tok_s']:9.1f} tok/s (ideal {p['ideal_tok_s']:.0f}), redis {p['redis_us_per_token']} us/tok{inst}, "
          f"gateway {p['gateway_us_per_token']} us/tok, ITL p50 {p['itl_p50_ms']} "
          f"p99 {p['itl_p99_ms']} ms (added {p['added_itl_p50_ms']} / {p['added_itl_p99_ms']})", flush=True)


def knee(points, limit_ms):
    """Per path (gateway, redis): the first point, in sweep order, whose added ITL p99 passes limit_ms."""
    out = {}
    for p in points:
        if p["via"] in out:
            continue
        if p["added_itl_p99_ms"] is not None and p["added_itl_p99_ms"] > limit_ms:
            out[p["via"]] = {"groups": p["groups"], "streams": p["streams"],
                             "added_itl_p99_ms": p["added_itl_p99_ms"], "tok_s": p["tok_s"]}
    return out


def ints(s):
    return [int(x) for x in s.split(",") if x]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("LLMQ_BUILD", ROOT / "build")), help="the build folder")
    shared = pathlib.Path(os.environ.get("LLMQ_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--model-dir", type=pathlib.Path, default=shared / "models" / "stories260K",
                    help="config.json + tokenizer.json (no weights are read)")
    ap.add_argument("--model", default="sim", help="the model name served")
    ap.add_argument("--groups", type=ints, default=[2], help="worker groups, or a sweep: 1,2,4")
    ap.add_argument("--streams", type=ints, default=[16], help="concurrent client streams, or a sweep: 16,64")
    ap.add_argument("--rate", type=float, default=50.0, help="synthetic tokens/s per sequence (1/step)")
    ap.add_argument("--max-num-seqs", type=int, default=64, help="each worker's batch size")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per point")
    ap.add_argument("--requests", type=int, default=0, help="a fixed number of requests per point instead")
    ap.add_argument("--direct", action="store_true", help="clients straight into Redis (no gateway)")
    ap.add_argument("--both", action="store_true", help="every point through the gateway, then straight in")
    ap.add_argument("--worker-arg", action="append", default=[], help="passed to every llmq-worker")
    ap.add_argument("--gateway-arg", action="append", default=[], help="passed to llmq-gateway")
    ap.add_argument("--redis-instances", type=ints, default=[1],
                    help="Redis instances, or a sweep: 1,2 (models spread over them, see above)")
    ap.add_argument("--models", type=int, default=0, dest="n_models",
                    help="models the load is split over (default: the largest --redis-instances)")
    ap.add_argument("--redis-cpu-limit", type=float, default=0.0,
                    help="cap each redis-server at this much of a core (a CPU cgroup; root), so Redis is the limit")
    ap.add_argument("--knee-ms", type=float, default=20.0, help="added ITL p99 that marks the knee")
    ap.add_argument("--short", action="store_true",
                    help="a few seconds: 2 groups x 4 streams, 16 requests of 16 tokens at 100 tokens/s, "
                         "through the gateway and straight in (--both)")
    ap.add_argument("--json", help="write the report as JSON ('-': stdout)")
    ap.add_argument("--keep", action="store_true", help="keep the logs' folder")
    a = ap.parse_args(argv)
    if a.short:
        a.groups, a.streams, a.rate, a.max_num_seqs = [2], [4], 100.0, 8
        a.output_tokens, a.prompt_tokens, a.requests, a.both = 16, 16, 16, True
    if not a.n_models:
        a.n_models = max(a.redis_instances)
    vias = [False, True] if a.both else [a.direct]
    for exe in ("llmq-worker", "llmq-loadtest") + (() if vias == [True] else ("llmq-gateway",)):
        if not (a.build / exe).exists():
            ap.error(f"{a.build / exe} is missing: build first (make BUILD={a.build})")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fleet_sim."))
    points = []
    try:
        for g in a.groups:
            for m in a.streams:
                for k in a.redis_instances:
                    for direct in vias:
                        a.direct = direct
                        p = run_point(a, g, m, tmp / f"g{g}-m{m}-r{k}-{'redis' if direct else 'gateway'}", k)
                        points.append(p)
                        show(p, a)

    finally:
        if a.keep:
            print(f"logs in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
        "worker_args": a.worker_arg,
        "points": points,
        "knee_ms": a.knee_ms,
        "knee": knee(points, a.knee_ms),
    }
    if a.json == "-":
        print(json.dumps(report, indent=1))
    elif a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    if a.json != "-":
        for p in points:
            top = ", ".join(f"{c} {n:.0f}" for c, n in list(p["ops_per_s"].items())[:6])
            print(f"  groups {p['groups']} streams {p['streams']} redis x{p['redis_instances']} via {p['via']} "
                  f"ops/s: {top}")
            top = ", ".join(f"{c} {v['us_per_call']:.2f}/call {v['us_per_token'] or 0:.2f}/token"
                            for c, v in list(p["command_us"].items())[:5])
            print(f"    commandstats usec: {top}")
        print(f"knee (added ITL p99 > {a.knee_ms} ms): {report['knee']}")
    return 0 if all(p["failed"] == 0 for p in points) else 1


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count()}


if __name__ == "__main__":
    sys.exit(main())
