"""A TEST DRIVER of the llmq Redis protocol v1 (docs/protocol.md): it plays
the worker's side so that the gateway and the client can be tested before,
and independently of, the real llmq-worker.  It is not a worker: it runs no
model, it answers every request with made-up tokens.

What it does is exactly what docs/protocol.md asks of a worker:
  - HSET its heartbeat in <prefix>workers at start and every second
    (`max_model_len` only when given), so the gateway serves its model;
  - XREADGROUP GROUP workers <consumer> on every priority lane of the model
    (<prefix>req:<model>#high, <prefix>req:<model>, <prefix>req:<model>#low),
    acking each entry on the lane it came from;
  - decode field `p` (msgpack request); a request that does not decode fails
    the job with an error chunk (status 400);
  - admit the job atomically (state final → XACK and drop; cancel flag → end
    as "cancelled"), like jobops_admit's script;
  - per step, XADD a chunk {seq, text, ids} to <prefix>job:{id}:out and
    PUBLISH the same bytes on <prefix>out:{id}, in one pipeline;
  - between steps, check the cancel flag and the deadline;
  - end with one MULTI: final chunk (finish, usage), PUBLISH, job hash
    (state, finish_reason, usage, finished), EXPIRE, XACK.

The reply to a request is chosen by `reply_fn(request) -> (pieces, finish)`
where pieces is a list of (text, [ids]) or (text, [ids], lp), lp being the
chunk's `lp` as docs/protocol.md writes it; the default answers max_tokens
pieces " t0", " t1", ... ending with finish "length".  A request whose prompt
is "FAIL" fails with status 400, "CRASH" fails with status 500.
"""
import json
import threading
import time

import msgpack
import redis


def default_reply(req):
    n = req.get("max_tokens") or 16
    return [(f" t{i}", [100 + i]) for i in range(n)], "length"


class FakeWorker:
    def __init__(self, url, model, prefix="llmq:", consumer="fake-0", delay=0.0, reply_fn=default_reply,
                 result_ttl=3600, max_model_len=None, heartbeat=True):
        self.r = redis.Redis.from_url(url)
        self.model = model
        self.prefix = prefix
        self.consumer = consumer
        self.delay = delay            # seconds between chunks
        self.reply_fn = reply_fn
        self.result_ttl = result_ttl
        self.stream = f"{prefix}req:{model}"  # the default lane; the entry in hand's lane while handling it
        self.lanes = [f"{prefix}req:{model}#high", self.stream, f"{prefix}req:{model}#low"]
        self.max_model_len = max_model_len  # reported in the heartbeat when given
        self.heartbeat = heartbeat          # False: a worker the gateway cannot see
        self._beat = 0.0
        self.seen = []                # decoded requests, in order (or the decode error)
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------ lifecycle
    def beat(self):
        """The heartbeat as docs/protocol.md writes it (field = consumer, value = JSON)."""
        hb = {"model": self.model, "consumer": self.consumer, "capacity": 8, "running": 0, "waiting": 0,
              "kv_free": 0, "kv_total": 0, "ts": int(time.time() * 1000)}
        if self.max_model_len:
            hb["max_model_len"] = self.max_model_len
        self.r.hset(f"{self.prefix}workers", self.consumer, json.dumps(hb))
        self._beat = time.time()

    def start(self):
        if self.heartbeat:
            self.beat()
        for lane in self.lanes:
            try:
                self.r.xgroup_create(lane, "workers", id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # ------------------------------------------------------------ the loop
    def _run(self):
        while not self._stop.is_set():
            try:
                if self.heartbeat and time.time() - self._beat >= 1.0:
                    self.beat()
                got = self.r.xreadgroup("workers", self.consumer, {s: ">" for s in self.lanes}, count=8, block=100)
            except redis.ConnectionError:
                time.sleep(0.1)
                continue
            for lane, entries in got or []:
                self.stream = lane.decode() if isinstance(lane, bytes) else lane
                for entry_id, fields in entries:
                    try:
                        self._handle(entry_id, fields)
                    except redis.ConnectionError:
                        pass  # Redis went away mid-job (a test stopped it): the entry stays pending

    def _keys(self, jid):
        return (f"{self.prefix}job:{{{jid}}}", f"{self.prefix}job:{{{jid}}}:out", f"{self.prefix}out:{{{jid}}}")

    def _publish_chunk(self, jid, chunk, final_hash=None, entry_id=None):
        job, out, chan = self._keys(jid)
        data = msgpack.packb(chunk)
        if final_hash is None:
            p = self.r.pipeline(transaction=False)
            p.xadd(out, {"c": data})
            p.publish(chan, data)
            p.execute()
            return
        p = self.r.pipeline(transaction=True)
        p.xadd(out, {"c": data})
        p.publish(chan, data)
        p.hset(job, mapping=final_hash)
        p.expire(job, self.result_ttl)
        p.expire(out, self.result_ttl)
        p.xack(self.stream, "workers", entry_id)
        p.execute()

    def _finish(self, jid, entry_id, seq, finish, prompt_tokens, completion_tokens, state, error=None, status=0):
        chunk = {"seq": seq, "text": "", "ids": [], "finish": finish,
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}
        h = {"state": state, "finish_reason": finish, "prompt_tokens": prompt_tokens,
             "completion_tokens": completion_tokens, "finished": int(time.time() * 1000)}
        if error:
            chunk["error"] = error
            chunk["status"] = status or 500
            h["error"] = error
        self._publish_chunk(jid, chunk, h, entry_id)

    def _admit(self, jid):
        """The admission of jobops_admit, done step by step (single driver, no race)."""
        job = self._keys(jid)[0]
        st = self.r.hget(job, "state")
        if st in (b"done", b"failed", b"cancelled", b"expired"):
            return 0
        if st is None:
            self.r.hset(job, mapping={"model": self.model, "created": int(time.time() * 1000)})
        self.r.hincrby(job, "attempts", 1)
        self.r.hset(job, mapping={"state": "running", "worker": self.consumer})
        self.r.hsetnx(job, "started", int(time.time() * 1000))
        return 2 if self.r.hget(job, "cancel") == b"1" else 1

    def _handle(self, entry_id, fields):
        jid = (fields.get(b"id") or b"").decode()
        try:
            req = msgpack.unpackb(fields[b"p"], raw=False)
            if not isinstance(req, dict):
                raise ValueError("request is not a map")
        except Exception as e:  # noqa: BLE001 - any garbage is a failed job
            self.seen.append({"error": str(e), "id": jid})
            if jid:
                self._finish(jid, entry_id, 0, "error", 0, 0, "failed", error=f"undecodable request: {e}", status=400)
            else:
                self.r.xack(self.stream, "workers", entry_id)
            return
        self.seen.append(req)
        admit = self._admit(jid)
        if admit == 0:
            self.r.xack(self.stream, "workers", entry_id)
            return
        prompt = req.get("prompt")
        prompt_tokens = len(req.get("prompt_ids") or []) or len(str(prompt or req.get("messages") or "").split())
        if admit == 2:
            return self._finish(jid, entry_id, 0, "cancelled", prompt_tokens, 0, "cancelled")
        if prompt in ("FAIL", "CRASH"):
            return self._finish(jid, entry_id, 0, "error", prompt_tokens, 0, "failed",
                                error="the fake worker was asked to fail", status=400 if prompt == "FAIL" else 500)
        # resume after the chunks already in the output stream (at-least-once contract)
        out = self._keys(jid)[1]
        seq = self.r.xlen(out)
        pieces, finish = self.reply_fn(req)
        produced = 0
        for piece in pieces[seq:]:
            text, ids = piece[0], piece[1]
            if self.r.hget(self._keys(jid)[0], "cancel") == b"1":
                return self._finish(jid, entry_id, seq, "cancelled", prompt_tokens, produced, "cancelled")
            dl = req.get("deadline_ms")
            if dl and time.time() * 1000 > dl:
                return self._finish(jid, entry_id, seq, "deadline", prompt_tokens, produced, "expired")
            chunk = {"seq": seq, "text": text, "ids": ids}
            if len(piece) > 2:
                chunk["lp"] = piece[2]
            self._publish_chunk(jid, chunk)
            seq += 1
            produced += len(ids)
            if self.delay:
                time.sleep(self.delay)
        self._finish(jid, entry_id, seq, finish, prompt_tokens, len(pieces), "done")


def wait_for(pred, timeout=10.0, interval=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("condition not met in time")
