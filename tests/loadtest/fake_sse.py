"""A scripted OpenAI-completions server for the llmq-loadtest tests.

It speaks just enough HTTP/1.1 (keep-alive, chunked responses) on 127.0.0.1
with asyncio in a background thread.  Every POST is answered by a script:

    ttft_ms    delay before the first token event (or callable(index) -> ms)
    itl_ms     list of gaps before events 2, 3, ... (cycled)
    tokens     events per answer; None = the request's max_tokens
    usage      send usage.completion_tokens in the last event
    fail       callable(index, body) -> None or (status, message)
    truncate   end the stream after this many events without [DONE]
    style      line endings of the event stream: "lf", "crlf" or "cr"
    split      write the stream in HTTP chunks of this many bytes (0: one
               chunk per event), so the client's SSE parser gets lines and
               even CRLF pairs cut in pieces
    noise      add what an SSE reader must skip: comments, event:/id:/retry:
               fields, and data split over two data: lines

A body with `messages` (chat) is answered as chat completions (delta /
message content), one with a text prompt counts its words as prompt tokens.
With `ssl` (an ssl.SSLContext) the server speaks HTTPS.

The server records every request it got (`bodies`: body, headers, and the
time.monotonic() times it finished reading it and wrote each token event,
`t_recv` and `t_events`, and whether it came on a new connection) and the largest number of answers it had open at
once (`max_open`).  time.monotonic() is CLOCK_MONOTONIC, the client's clock.
"""
import asyncio
import json
import threading
import time


class FakeSSEServer:
    def __init__(self, ttft_ms=100.0, itl_ms=(20.0,), tokens=None, usage=True, fail=None, truncate=None,
                 chunked=True, style="lf", split=0, noise=False, ssl=None):
        self.ttft_ms = ttft_ms
        self.itl_ms = list(itl_ms)
        self.tokens = tokens
        self.usage = usage
        self.fail = fail
        self.truncate = truncate
        self.chunked = chunked
        self.eol = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}[style]
        self.split = split
        self.noise = noise
        self.ssl = ssl
        self.bodies = []
        self.open = 0
        self.max_open = 0
        self.connections = 0
        self.port = None
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self):
        if self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096, ssl=self.ssl))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for t in tasks:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    @property
    def url(self):
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ HTTP
    async def _serve(self, reader, writer):
        self.connections += 1
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = await self._answer(writer, json.loads(body), headers, first)
                first = False
                if not keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer, body, headers, first):
        index = len(self.bodies)
        self.bodies.append({"body": body, "headers": headers, "t_recv": time.monotonic(), "t_events": [],
                            "new_connection": first})
        failure = self.fail(index, body) if self.fail else None
        if failure:
            status, msg = failure
            payload = json.dumps({"error": {"message": msg, "type": "server_error", "code": None}}).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
            return True
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            ttft = self.ttft_ms(index) if callable(self.ttft_ms) else self.ttft_ms
            return await self._stream(writer, body, ttft, self.bodies[index]["t_events"])
        finally:
            self.open -= 1

    async def _stream(self, writer, body, ttft_ms, t_events):
        chat = "messages" in body
        n = self.tokens if self.tokens is not None else body["max_completion_tokens" if chat else "max_tokens"]
        n_prompt = prompt_tokens(body)
        if not body.get("stream"):
            await asyncio.sleep(ttft_ms / 1000)
            choice = ({"index": 0, "message": {"role": "assistant", "content": "x" * n}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "x" * n, "finish_reason": "length"})
            out = {"choices": [choice], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n}}
            payload = json.dumps(out).encode()
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
            return True
        if self.chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")

        def send(data):
            pieces = [data[i:i + self.split] for i in range(0, len(data), self.split)] if self.split else [data]
            for p in pieces:
                writer.write(b"%x\r\n" % len(p) + p + b"\r\n" if self.chunked else p)

        eol = self.eol

        def event(obj, k):
            text = json.dumps(obj).encode()
            if not self.noise:
                return b"data: " + text + eol + eol
            half = text.index(b",") + 1  # JSON allows the newline the reader puts between data lines
            return (b": keep-alive" + eol + b"event: completion" + eol + b"id: %d" % k + eol + b"retry: 1000" + eol
                    + b"data:" + text[:half] + eol + b"data: " + text[half:] + eol + eol)

        await writer.drain()
        await asyncio.sleep(ttft_ms / 1000)
        for i in range(n):
            if i:
                await asyncio.sleep(self.itl_ms[(i - 1) % len(self.itl_ms)] / 1000)
            if self.truncate is not None and i == self.truncate:
                if self.chunked:
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
                return False
            if chat:
                ev = {"id": "chatcmpl-x", "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}
            else:
                ev = {"id": "cmpl-x", "object": "text_completion",
                      "choices": [{"index": 0, "text": "tok ", "finish_reason": None}]}
            data = event(ev, i)
            if i == n - 1:
                if chat:
                    fin = {"id": "chatcmpl-x", "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
                else:
                    fin = {"id": "cmpl-x", "object": "text_completion",
                           "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
                if self.usage:
                    fin["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n,
                                    "total_tokens": n_prompt + n}
                data += event(fin, n) + b"data: [DONE]" + eol + eol
            send(data)
            t_events.append(time.monotonic())
            await writer.drain()
        if self.chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        return False


def prompt_tokens(body):
    """The fake's token count of a prompt: ids as they are, words of text."""
    if "messages" in body:
        return sum(len(m["content"].split()) for m in body["messages"])
    if isinstance(body["prompt"], str):
        return len(body["prompt"].split())
    return len(body["prompt"])
