"""Small apps and raw clients for server tests that need a real process or raw bytes.

Run an app as a server process (real signals, real exit status)::

    python -m tests.server.apps serve --port 0 --graceful-timeout 3 [--loop asyncio]

It is :func:`rawstream.cli.main` with :class:`StreamApp` as the app factory, so the
process goes through the same signal handling and shutdown path as ``rawstream serve``.
Its endpoints:

* ``GET /health``: ``200 ok``.
* ``GET /sse?interval=S``: an SSE stream of numbered events, forever.
* ``GET /sse-idle``: one event, then nothing but the server's heartbeats.
* ``GET /sse-stubborn?interval=S``: an SSE stream whose handler ignores cancellation
  (it catches ``CancelledError`` and keeps streaming), as a misbehaving handler would.
* ``GET /ws-stream?interval=S``: a WebSocket sending numbered messages forever while
  it reads (and drops) whatever the client sends.
* ``GET /ws-echo``: a WebSocket echoing every message.

The clients below speak through h11 and wsproto *as clients*, so a test can check the
exact framing (a chunked body that ends with ``0\\r\\n\\r\\n``, a Close frame's code)
and misbehave on purpose (never read, never answer a ping or a Close).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)

from rawstream.cli import main
from rawstream.config import Config
from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from rawstream.server.server import Server
from tests.support import ServerProcess

log = logging.getLogger("rawstream")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------- the app
class StreamApp:
    """Streaming endpoints for shutdown tests and the idle-memory benchmark."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = Server(config, self.handle)

    async def start(self) -> None:
        """Listen and print the banner :class:`~tests.support.ServerProcess` waits for."""
        await self.server.start()
        log.info("test app listening on http://%s:%d", self.config.host, self.server.port)

    async def close(self) -> None:
        """Nothing to release."""

    async def handle(self, exchange: Exchange) -> None:
        """Route one request (see the module docstring)."""
        path = exchange.request.path
        interval = float(exchange.request.query_params().get("interval", "0.05"))
        if path == "/health":
            await exchange.respond(200, b"ok", content_type=b"text/plain")
        elif path == "/sse":
            sse = await exchange.start_sse()
            n = 0
            while True:
                await sse.send(f"id: {n}\ndata: {n}\n\n".encode())
                n += 1
                await asyncio.sleep(interval)
        elif path == "/sse-idle":
            sse = await exchange.start_sse()
            await sse.send(b"data: hello\n\n")
            # Idle until cancelled: a bare future (an Event would add its own deque).
            await asyncio.get_running_loop().create_future()
        elif path == "/sse-stubborn":
            sse = await exchange.start_sse()
            n = 0
            while True:
                try:
                    await sse.send(f"data: {n}\n\n".encode())
                    n += 1
                    await asyncio.sleep(interval)
                except asyncio.CancelledError:
                    continue  # a handler that ignores its cancellation
        elif path == "/ws-stream":
            ws = await exchange.accept_websocket()
            reader = asyncio.create_task(_drain(ws.receive))
            try:
                n = 0
                while True:
                    await ws.send(f"message {n}")
                    n += 1
                    await asyncio.sleep(interval)
            finally:
                reader.cancel()
        elif path == "/ws-echo":
            ws = await exchange.accept_websocket()
            with contextlib.suppress(WebSocketClosed):
                while True:
                    await ws.send(await ws.receive())
        elif path.startswith("/debug/") and os.environ.get("RAWSTREAM_TEST_DEBUG"):
            await exchange.respond(200, _debug(path).encode(), content_type=b"text/plain")
        elif path == "/stats":
            stats = self.server.statistics()
            body = {"connections": stats.connections, "accepted": stats.accepted_total}
            await exchange.respond(200, json.dumps(body).encode())
        else:
            await exchange.respond(404, b"not found", content_type=b"text/plain")


_baseline: list[object] = []


def _debug(path: str) -> str:
    """``/debug/baseline`` and ``/debug/top``: tracemalloc in the server process
    (run it with ``PYTHONTRACEMALLOC=1``), for the idle-memory benchmark."""
    import gc
    import tracemalloc

    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    if path == "/debug/baseline":
        _baseline[:] = [snapshot]
        return "ok"
    stats = snapshot.compare_to(_baseline[0], "lineno")  # type: ignore[arg-type]
    return "\n".join(str(s) for s in stats[:25])


async def _drain(receive: object) -> None:
    with contextlib.suppress(WebSocketClosed):
        while True:
            await receive()  # type: ignore[operator]


class AppProcess(ServerProcess):
    """:class:`StreamApp` in a subprocess, started like ``rawstream serve``."""

    def __init__(self, *args: str) -> None:
        super().__init__(env={"PYTHONPATH": REPO_ROOT})
        self.args = [sys.executable, "-m", "tests.server.apps", "serve", "--port", "0"]
        self.args += ["--no-access-log", *args]


# ---------------------------------------------------------------------- raw clients
async def connect(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``127.0.0.1:port``; ``rcvbuf`` shrinks its receive buffer.

    The buffer is set before ``connect()`` so the TCP window scale is chosen for it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # A small reader limit: the client reads only when the test tells it to.
    return await asyncio.open_connection(sock=sock, limit=2**16)


async def silent_socket(port: int, request: bytes, rcvbuf: int = 4096) -> socket.socket:
    """A client that sends ``request`` and then never reads (a stalled reader).

    Its receive buffer is small, so the server's writes back up quickly. The caller
    closes the socket.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


async def silent_websocket(port: int, target: str, rcvbuf: int = 4096) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    loop = asyncio.get_running_loop()
    ws = WSConnection(ConnectionType.CLIENT)
    sock = await silent_socket(port, ws.send(Request(host="127.0.0.1", target=target)), rcvbuf)
    head = b""
    while b"\r\n\r\n" not in head:
        # One byte at a time: nothing after the 101 response head is read.
        byte = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        assert byte, "server closed during the handshake"
        head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


@dataclass
class HTTPClient:
    """One HTTP/1.1 client connection parsed by h11 (exact framing, cut bodies seen)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    body: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> HTTPClient:
        reader, writer = await connect(port, rcvbuf)
        return cls(reader, writer)

    def request(self, target: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send a GET request for ``target``."""
        all_headers = [("host", "127.0.0.1"), *headers]
        self.writer.write(
            self.conn.send(h11.Request(method="GET", target=target, headers=all_headers))
        )
        self.writer.write(self.conn.send(h11.EndOfMessage()))

    async def next_event(self) -> h11.Event:
        """The next response event; ``h11.ConnectionClosed`` at EOF.

        Raises ``h11.RemoteProtocolError`` if the server closes in the middle of a
        body (a cut chunked stream).
        """
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            assert isinstance(event, h11.Event)
            if isinstance(event, h11.Data):
                self.body += event.data
            return event

    async def response(self) -> h11.Response:
        """Wait for the response head."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event

    async def read_until(self, marker: bytes) -> None:
        """Read body data until ``marker`` has arrived."""
        while marker not in self.body:
            event = await self.next_event()
            if not isinstance(event, h11.Data):
                raise AssertionError(f"{event} before {marker!r}; body so far {self.body!r}")

    async def read_to_end(self) -> h11.EndOfMessage:
        """Read the rest of the body; fail unless it ends with a complete message."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return event
            if not isinstance(event, h11.Data):
                raise AssertionError(f"body ended with {event}, not EndOfMessage")

    async def wait_closed(self) -> None:
        """Wait until the server closes the connection (EOF or reset)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.close()


@dataclass
class WSClient:
    """One WebSocket client connection driven by wsproto (misbehaves on request)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ws: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.CLIENT))
    pending: list[Event] = field(default_factory=list)

    @classmethod
    async def open(cls, port: int, target: str, rcvbuf: int | None = None) -> WSClient:
        reader, writer = await connect(port, rcvbuf)
        client = cls(reader, writer)
        writer.write(client.ws.send(Request(host="127.0.0.1", target=target)))
        event = await client.next_event()
        assert isinstance(event, AcceptConnection), event
        return client

    async def next_event(self) -> Event | None:
        """The next WebSocket event; ``None`` when the server closed TCP."""
        while not self.pending:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                return None
            if self.ws.state is not ConnectionState.CLOSED:
                self.ws.receive_data(data)
                self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def next_control(self) -> Ping | CloseConnection | None:
        """Skip data messages up to the next Ping or Close (``None`` at TCP close)."""
        while True:
            event = await self.next_event()
            if event is None or isinstance(event, Ping | CloseConnection):
                return event
            assert isinstance(event, TextMessage | BytesMessage), event

    def send(self, event: Event) -> None:
        self.writer.write(self.ws.send(event))

    async def wait_closed(self) -> None:
        """Read (and drop) everything until the server closes TCP."""
        while await self.next_event() is not None:
            pass

    def close(self) -> None:
        self.writer.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], app_factory=StreamApp))
