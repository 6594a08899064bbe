"""A lean load client for streaming endpoints, timing every event itself.

It speaks HTTP/1.1 and WebSocket on raw asyncio sockets (``asyncio.Protocol``,
uvloop when installed), with no client library in the way: a request is a
pre-encoded byte string, a response head is split by hand, the chunked body is
undone by :class:`Dechunker` and the event stream is parsed by rawstream's own
:class:`~rawstream.sansio.sse.SSEParser`. WebSocket frames are parsed and masked
here too (RFC 6455 section 5). Every server is measured by the same client, so the
client's own cost is the same for all of them.

Two ways to load a server:

* **Streams** (:func:`run_streams`): ``N`` streams held open at once, SSE
  (``POST /v1/chat/completions``, one stream per connection) or WebSocket
  (``GET /v1/ws``, ``per_conn`` logical streams per connection). A stream that
  finishes is started again at once on the same connection, so ``N`` stay open.
  Only events inside a measurement window ``[t0, t1)`` count: delivered events,
  and the gap between consecutive content events of one stream (the inter-token
  latency seen by the client). Before the window the streams ramp up; after it,
  every connection is aborted.
* **Requests** (:func:`run_requests`): ``C`` workers, each sending ``R`` streaming
  requests one after another on fresh connections; every request reports its time
  to first token, its token count and how it ended.

A stream is *complete* when it ends with ``[DONE]`` after a chunk with a
``finish_reason`` (or, on the WebSocket, with ``done``). It is *truncated* when it
ends with ``[DONE]`` but no finish reason, or when the body ends without
``[DONE]``; an ``error`` event or message counts as an error. Anything unexpected
(refused connection, non-200 status, a reset) is counted by kind in ``errors``.

Command line (the harness runs one or more of these in their own processes)::

    python -m benchmarks.loadgen --port 8000 --mode sse --streams 1000

It prints ``READY {...}`` once every stream has delivered its first event, then
reads ``WINDOW <t0> <t1>`` (``time.monotonic()`` values, shared by every process
on the machine) from stdin, and prints ``RESULT {...}`` (JSON) when the window
has closed. ``--window S`` measures the ``S`` seconds after READY without waiting
for stdin. Gaps are written as float32 seconds to ``--gaps-out`` for the harness
to merge across client processes.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import contextlib
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rawstream.sansio.sse import SSEParser

__all__ = [
    "Dechunker",
    "Load",
    "Recorder",
    "percentile",
    "run_requests",
    "run_streams",
]

#: Listen and connect on loopback only.
HOST = "127.0.0.1"


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def percentile(values: Any, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank; NaN when empty."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(data)))
    return float(data[rank - 1])


@dataclass
class Load:
    """What to ask the server for."""

    port: int
    host: str = HOST
    mode: str = "sse"  #: "sse" or "ws"
    max_tokens: int = 100_000
    prompt: str = "Tell me a long story about streams and sockets."
    temperature: float = 0.0
    model: str = "bench"
    per_conn: int = 1  #: logical streams per WebSocket connection

    def body(self) -> dict[str, Any]:
        """The chat completion request (also the body of a WebSocket ``generate``)."""
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
        }

    def sse_request(self) -> bytes:
        """The whole HTTP request of one SSE stream, encoded once."""
        body = json.dumps(self.body(), separators=(",", ":")).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


@dataclass
class Recorder:
    """Counters shared by every stream of one client process."""

    t0: float = math.inf  #: window start (time.monotonic)
    t1: float = math.inf  #: window end
    events: int = 0  #: content events inside the window
    gaps: array.array[float] = field(default_factory=lambda: array.array("f"))
    ttft: array.array[float] = field(default_factory=lambda: array.array("f"))
    completed: int = 0
    truncated: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False

    def content(self, stream: StreamState, t: float) -> None:
        """A content event of ``stream`` arrived at ``t``."""
        last = stream.last
        if last is None:
            stream.first = t
            self.ttft.append(t - stream.sent_at)
        if self.t0 <= t < self.t1:
            self.events += 1
            if last is not None:
                self.gaps.append(t - last)
        stream.last = t
        stream.events += 1


@dataclass(eq=False, slots=True)
class StreamState:
    """One stream (one request, or one ``generate``) in flight."""

    sent_at: float = 0.0
    first: float | None = None
    last: float | None = None
    events: int = 0
    done: bool = False  #: saw [DONE] (SSE) or "done" (WebSocket)
    finish_reason: str | None = None
    error: str | None = None

    def outcome(self) -> str:
        """``complete``, ``error``, ``no_done`` or ``null_finish``."""
        if self.error is not None:
            return "error"
        if not self.done:
            return "no_done"
        if self.finish_reason is None:
            return "null_finish"
        return "complete"

    def report(self, ended: float) -> dict[str, Any]:
        """This stream's numbers, for requests mode."""
        return {
            "outcome": self.outcome(),
            "finish_reason": self.finish_reason,
            "tokens": self.events,
            "ttft": None if self.first is None else self.first - self.sent_at,
            "decode_s": None if self.first is None else ended - self.first,
            "started": self.sent_at,
            "ended": ended,
            "error": self.error,
        }


class Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1), incrementally."""

    __slots__ = ("_buf", "_need", "_skip", "_trailer", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._need = 0  # bytes of chunk data still to come
        self._skip = 0  # bytes of the CRLF after chunk data still to skip
        self._trailer = False
        #: The last chunk and the trailer section have been read.
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload bytes that ``data`` completes."""
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        i, n = 0, len(buf)
        while i < n and not self.done:
            if self._need:
                take = min(self._need, n - i)
                out.append(buf[i : i + take])
                i += take
                self._need -= take
                if not self._need:
                    self._skip = 2
                continue
            if self._skip:
                k = min(self._skip, n - i)
                i += k
                self._skip -= k
                continue
            j = buf.find(b"\r\n", i)
            if j < 0:
                break
            line = buf[i:j]
            i = j + 2
            if self._trailer:
                if not line:
                    self.done = True
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self._trailer = True
            else:
                self._need = size
        self._buf = buf[i:]
        return out[0] if len(out) == 1 else b"".join(out)


class _Head:
    """Splits a response head from the bytes that follow it."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> tuple[int, dict[bytes, bytes], bytes] | None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buf[:end].split(b"\r\n")
        rest = self.buf[end + 4 :]
        self.buf = b""
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, rest


class _Client:
    """What every connection of one process shares."""

    def __init__(self, load: Load, rec: Recorder, continuous: bool) -> None:
        self.load = load
        self.rec = rec
        self.continuous = continuous
        self.request = load.sse_request()
        self.connections: set[asyncio.Transport] = set()
        self.first_event = 0  #: streams that have delivered their first content event
        self.heads = 0  #: connections that got their response head (or failed)
        self.changed = asyncio.Event()

    def note(self) -> None:
        self.changed.set()

    def head_done(self, seen: asyncio.Event) -> None:
        """A connection got its response head, or failed before it."""
        self.heads += 1
        seen.set()
        self.changed.set()

    def content(self, stream: StreamState, t: float) -> None:
        self.rec.content(stream, t)
        if stream.events == 1:
            self.changed.set()  # a stream is up: the ramp may be complete


class SSEConnection(asyncio.Protocol):
    """One connection carrying one SSE stream at a time (keep-alive between them)."""

    def __init__(self, client: _Client, finished: asyncio.Future[dict[str, Any]] | None) -> None:
        self.client = client
        self.rec = client.rec
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.stream = StreamState()
        self._reset()
        self.counted_head = False
        self.head_seen = asyncio.Event()

    def _reset(self) -> None:
        self.head: _Head | None = _Head()
        self.status = 0
        self.dechunk: Dechunker | None = None
        self.length = -1
        self.parser = SSEParser()
        self.in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.client.connections.add(self.transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self._reset()
        self.stream = StreamState(sent_at=time.monotonic())
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        if self.head is not None:
            parsed = self.head.feed(data)
            if parsed is None:
                return
            self.head = None
            self.status, headers, data = parsed
            self.rec.statuses[self.status] += 1
            if not self.counted_head:
                self.counted_head = True
                self.client.head_done(self.head_seen)
            if self.status != 200:
                self.stream.error = f"status {self.status}"
                self.rec.errors[f"status_{self.status}"] += 1
                self._end(t, reuse=False)
                return
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                self.dechunk = Dechunker()
            else:
                self.length = int(headers.get(b"content-length", b"-1"))
            self.in_body = True
        if self.dechunk is not None:
            payload = self.dechunk.feed(data)
            ended = self.dechunk.done
        else:
            payload = data
            if self.length >= 0:
                self.length -= len(data)
            ended = self.length == 0
        if payload:
            for event in self.parser.feed(payload):
                self._event(event.data, t)
        if ended:
            self._end(t, reuse=True)

    def _event(self, data: str, t: float) -> None:
        stream = self.stream
        if data == "[DONE]":
            stream.done = True
            return
        obj = json.loads(data)
        if "error" in obj:
            stream.error = str(obj["error"].get("code") or obj["error"].get("message"))
            return
        choices = obj.get("choices")
        if not choices:
            return
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason:
            stream.finish_reason = reason
        delta = choice.get("delta")
        text = delta.get("content") if delta is not None else choice.get("text")
        if text:
            self.client.content(stream, t)

    def _end(self, t: float, *, reuse: bool) -> None:
        self.in_body = False
        stream = self.stream
        outcome = stream.outcome()
        rec = self.rec
        if outcome == "complete":
            rec.completed += 1
        elif outcome == "error":
            if stream.error and not stream.error.startswith("status"):
                rec.errors["error_event"] += 1
        else:
            rec.truncated[outcome] += 1
        if self.finished is not None:
            if not self.finished.done():
                self.finished.set_result(stream.report(t))
            if self.transport is not None:
                self.transport.close()
            return
        if self.client.continuous and reuse and not rec.stopping:
            self._send()  # keep N streams open: the next one on the same connection
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.client.connections.discard(self.transport)
        if self.rec.stopping:
            return
        if self.head is not None and not self.counted_head:
            self.counted_head = True
            self.client.head_done(self.head_seen)
        if self.in_body or self.head is not None:
            # Cut in the middle of a response.
            self.rec.errors["connection_lost"] += 1
            if self.in_body:
                self.rec.truncated["no_done"] += 1
            if self.finished is not None and not self.finished.done():
                # Its outcome says what was seen before the cut: no_done or null_finish.
                self.finished.set_result(self.stream.report(time.monotonic()))


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, final client frame (RFC 6455 section 5.2-5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


class WSConnection(asyncio.Protocol):
    """One WebSocket carrying ``per_conn`` logical streams of the ``/v1/ws`` protocol."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.rec = client.rec
        self.transport: asyncio.Transport | None = None
        self.head: _Head | None = _Head()
        self.buf = b""
        self.fragments: list[bytes] = []
        self.streams: dict[int, StreamState] = {}
        self.upgraded = False
        self.head_seen = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.client.connections.add(self.transport)
        key = base64.b64encode(os.urandom(16)).decode()
        load = self.client.load
        transport.write(
            (
                f"GET /v1/ws HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: rawstream\r\n\r\n"
            ).encode()
        )

    def _generate(self, stream_id: int) -> None:
        assert self.transport is not None
        message = {"type": "generate", "id": stream_id, **self.client.load.body()}
        self.streams[stream_id] = StreamState(sent_at=time.monotonic())
        self.transport.write(ws_frame(json.dumps(message, separators=(",", ":")).encode()))

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        if self.head is not None:
            parsed = self.head.feed(data)
            if parsed is None:
                return
            self.head = None
            status, _headers, data = parsed
            self.rec.statuses[status] += 1
            self.client.head_done(self.head_seen)
            if status != 101:
                self.rec.errors[f"status_{status}"] += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            for stream_id in range(self.client.load.per_conn):
                self._generate(stream_id)
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            length = b1 & 0x7F
            start = i + 2
            if length == 126:
                if n - i < 4:
                    break
                length = int.from_bytes(buf[i + 2 : i + 4], "big")
                start = i + 4
            elif length == 127:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2 : i + 10], "big")
                start = i + 10
            if n - start < length:
                break
            payload = buf[start : start + length]
            i = start + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload, t)
        self.buf = buf[i:]

    def _frame(self, fin: int, opcode: int, payload: bytes, t: float) -> None:
        assert self.transport is not None
        if opcode in (0x0, 0x1, 0x2):
            if not fin:
                self.fragments.append(payload)
                return
            if self.fragments:
                payload = b"".join([*self.fragments, payload])
                self.fragments = []
            self._message(payload, t)
        elif opcode == 0x9:  # ping: answer with a pong carrying the same data
            self.transport.write(ws_frame(payload, 0xA))
        elif opcode == 0x8:  # close: echo it, then the server closes TCP
            if not self.rec.stopping:
                self.rec.errors["ws_closed_by_server"] += 1
            self.transport.write(ws_frame(payload[:2], 0x8))

    def _message(self, payload: bytes, t: float) -> None:
        obj = json.loads(payload)
        kind = obj.get("type")
        stream = self.streams.get(obj.get("id"))  # type: ignore[arg-type]
        if stream is None:
            return
        if kind == "delta":
            if obj.get("text"):
                self.client.content(stream, t)
        elif kind == "done":
            stream.done = True
            stream.finish_reason = obj.get("finish_reason")
            self._end(obj["id"], stream)
        elif kind == "error":
            stream.error = str(obj.get("error", {}).get("code"))
            self._end(obj["id"], stream)

    def _end(self, stream_id: int, stream: StreamState) -> None:
        outcome = stream.outcome()
        if outcome == "complete":
            self.rec.completed += 1
        elif outcome == "error":
            self.rec.errors["error_message"] += 1
        else:
            self.rec.truncated[outcome] += 1
        del self.streams[stream_id]
        if self.client.continuous and not self.rec.stopping:
            self._generate(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.client.connections.discard(self.transport)
        if self.rec.stopping:
            return
        if self.head is not None:
            self.client.head_done(self.head_seen)
        self.rec.errors["connection_lost"] += 1
        self.rec.truncated["no_done"] += len(self.streams)


async def _connect(client: _Client, factory: Any, gate: asyncio.Semaphore) -> None:
    load = client.load
    async with gate:
        try:
            _transport, protocol = await asyncio.get_running_loop().create_connection(
                factory, load.host, load.port
            )
        except OSError as exc:
            client.rec.errors[f"connect_{type(exc).__name__}"] += 1
            client.head_done(asyncio.Event())
            return
        # Hold the gate until this connection's head arrives: a bounded ramp that
        # never overflows the server's accept queue.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.head_seen.wait(), 10)


async def _wait_until(client: _Client, condition: Any) -> None:
    while not condition():
        client.changed.clear()
        await client.changed.wait()


async def run_streams(
    load: Load,
    streams: int,
    *,
    window: tuple[float, float] | None = None,
    window_source: Any = None,
    ready: Any = None,
    ramp_concurrency: int = 200,
    ramp_timeout: float = 60.0,
    idle: bool = False,
) -> dict[str, Any]:
    """Hold ``streams`` streams open; measure the window; return the client's numbers.

    The window is ``window`` (absolute ``time.monotonic()`` values) or, when that is
    ``None``, whatever the coroutine function ``window_source`` returns after the
    ramp. ``ready(info)`` is called once the streams are up (or the ramp timed out).
    With ``idle``, a stream is up once its response head (or the ``101``) has
    arrived, and WebSockets start no stream.
    """
    rec = Recorder()
    client = _Client(load, rec, continuous=True)
    gate = asyncio.Semaphore(ramp_concurrency)
    if idle and load.mode == "ws":
        load.per_conn = 0
    per_conn = max(1, load.per_conn)
    connections = math.ceil(streams / per_conn) if load.mode == "ws" else streams
    if load.mode == "ws":
        factory: Any = lambda: WSConnection(client)  # noqa: E731
    else:
        factory = lambda: SSEConnection(client, None)  # noqa: E731
    started = time.monotonic()
    tasks = [asyncio.ensure_future(_connect(client, factory, gate)) for _ in range(connections)]

    def up() -> bool:
        if idle:
            return client.heads >= connections
        return client.heads >= connections and len(rec.ttft) + _failed(rec) >= streams

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_wait_until(client, up), ramp_timeout)
    ramp = time.monotonic() - started
    info = {"connections": len(client.connections), "streams_started": len(rec.ttft)}
    info["ramp_s"] = round(ramp, 3)
    if ready is not None:
        ready(info)
    if window is None:
        window = await window_source()
    t0, t1 = window
    rec.t0, rec.t1 = t0, t1
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, t1 - time.monotonic()))
    cpu1 = time.process_time()
    rec.stopping = True
    open_at_end = len(client.connections)
    for transport in list(client.connections):
        transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0)
    return {
        "mode": load.mode,
        "streams": streams,
        "connections_open_at_end": open_at_end,
        "ramp_s": info["ramp_s"],
        "window_s": t1 - t0,
        "events": rec.events,
        "events_per_s": rec.events / (t1 - t0),
        "gap_count": len(rec.gaps),
        "gap_p50_ms": percentile(rec.gaps, 50) * 1e3,
        "gap_p99_ms": percentile(rec.gaps, 99) * 1e3,
        "ttft_p50_ms": percentile(rec.ttft, 50) * 1e3,
        "completed": rec.completed,
        "truncated": dict(rec.truncated),
        "errors": dict(rec.errors),
        "statuses": {str(k): v for k, v in rec.statuses.items()},
        "client_cpu_s": cpu1 - cpu0,
        "gaps": rec.gaps,  # every inter-token gap in the window, in seconds (float32)
    }


def _failed(rec: Recorder) -> int:
    return sum(rec.errors.values())


async def run_requests(
    load: Load, concurrency: int, per_worker: int, *, timeout: float = 300.0
) -> dict[str, Any]:
    """``concurrency`` workers each send ``per_worker`` SSE requests in turn."""
    rec = Recorder()
    client = _Client(load, rec, continuous=False)
    loop = asyncio.get_running_loop()
    results: list[dict[str, Any]] = []

    async def worker() -> None:
        for _ in range(per_worker):
            finished: asyncio.Future[dict[str, Any]] = loop.create_future()
            try:
                await loop.create_connection(
                    lambda f=finished: SSEConnection(client, f),  # type: ignore[misc]
                    load.host,
                    load.port,
                )
                results.append(await asyncio.wait_for(finished, timeout))
            except (OSError, TimeoutError) as exc:
                rec.errors[f"request_{type(exc).__name__}"] += 1
                now = time.monotonic()
                results.append({"outcome": "error", "tokens": 0, "started": now, "ended": now})

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    outcomes = collections.Counter(r["outcome"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    rates = [
        (r["tokens"] - 1) / r["decode_s"]
        for r in results
        if r["outcome"] == "complete" and r.get("decode_s") and r["tokens"] > 1
    ]
    ttfts = [r["ttft"] for r in results if r.get("ttft") is not None]
    return {
        "mode": "requests",
        "concurrency": concurrency,
        "requests": len(results),
        "outcomes": dict(outcomes),
        "complete": outcomes.get("complete", 0),
        "failed_or_truncated": len(results) - outcomes.get("complete", 0),
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tokens_per_s": tokens / wall if wall > 0 else math.nan,
        "stream_tokens_per_s_p50": percentile(rates, 50),
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_max_ms": (max(ttfts) * 1e3) if ttfts else math.nan,
        "statuses": {str(k): v for k, v in rec.statuses.items()},
        "errors": dict(rec.errors),
        "results": results,
    }


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def _read_window() -> tuple[float, float]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    word, t0, t1 = line.split()
    if word != "WINDOW":
        raise SystemExit(f"expected WINDOW <t0> <t1>, got {line!r}")
    return float(t0), float(t1)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("sse", "ws", "requests"), default="sse")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--per-conn", type=int, default=1, help="WebSocket streams/connection")
    parser.add_argument("--max-tokens", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=None, help="measure S s after READY")
    parser.add_argument("--warmup", type=float, default=1.0, help="with --window: wait first")
    parser.add_argument("--concurrency", type=int, default=1, help="requests mode")
    parser.add_argument("--requests", type=int, default=1, help="requests per worker")
    parser.add_argument("--prompt", default=Load.prompt)
    parser.add_argument("--gaps-out", default=None)
    parser.add_argument("--ramp-concurrency", type=int, default=200)
    parser.add_argument("--idle", action="store_true", help="up once the head has arrived")
    parser.add_argument("--ramp-timeout", type=float, default=60.0, help="longest ramp, s")
    args = parser.parse_args(argv)
    raise_fd_limit()
    load = Load(
        port=args.port,
        mode="ws" if args.mode == "ws" else "sse",
        max_tokens=args.max_tokens,
        per_conn=args.per_conn,
        prompt=args.prompt,
    )

    def ready(info: dict[str, Any]) -> None:
        print("READY " + json.dumps(info), flush=True)

    async def relative_window() -> tuple[float, float]:
        t0 = time.monotonic() + args.warmup
        return t0, t0 + args.window

    async def go() -> dict[str, Any]:
        if args.mode == "requests":
            return await run_requests(load, args.concurrency, args.requests)
        source = relative_window if args.window is not None else _read_window
        return await run_streams(
            load,
            args.streams,
            window_source=source,
            ready=ready,
            ramp_concurrency=args.ramp_concurrency,
            ramp_timeout=args.ramp_timeout,
            idle=args.idle,
        )

    loop = _new_loop()
    try:
        result = loop.run_until_complete(go())
    finally:
        loop.close()
    gaps = result.pop("gaps", None)
    if args.gaps_out and gaps is not None:
        Path(args.gaps_out).write_bytes(gaps.tobytes())
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
