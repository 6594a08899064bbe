"""Graceful shutdown with real signals, on a server process running each event loop.

The server process is :mod:`tests.server.apps` run through ``rawstream.cli.main``,
so SIGTERM/SIGINT reach the same handlers as in ``rawstream serve``. Its loop is
the one the test itself runs on (``--loop uvloop`` under uvloop, ``--loop asyncio``
under the stock loop), so both loops are covered on both sides.

What DESIGN section 3 promises, checked from the clients' side of the sockets:

* every open SSE stream receives a final event with ``retry:`` and the chunked
  terminator (h11 parses each response as a client: a cut body is an error);
* every WebSocket receives Close 1001 and the close handshake completes;
* the process exits 0 within ``--graceful-timeout`` + 1 s;
* idle keep-alive connections close at once; a request arriving during shutdown is
  answered 503 with ``Connection: close``;
* a second signal aborts at once; a WebSocket client that never answers Close is
  cut at ``--ws-close-timeout``; a handler that ignores shutdown is cut at the grace
  deadline.

Exit deadlines are asserted by waiting for the exit with that deadline as timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import h11
import pytest
import websockets
from wsproto.events import CloseConnection

from rawstream.server.connection import HTTPConnection
from rawstream.server.exchange import Exchange
from tests.server.apps import AppProcess, HTTPClient, WSClient
from tests.support import serve

STREAMS = 50
GRACE = 3.0
RETRY_MS = 1500
SHUTDOWN_EVENT = b'event: shutdown\ndata: {"reason":"server shutting down"}\n\n'


def loop_flag() -> str:
    """The ``--loop`` choice matching the loop this test runs on."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


@contextlib.asynccontextmanager
async def app_process(*args: str) -> AsyncIterator[AppProcess]:
    process = AppProcess("--loop", loop_flag(), "--sse-retry-ms", str(RETRY_MS), *args)
    await process.start(timeout=30)
    try:
        yield process
    finally:
        await process.stop()


async def open_sse(port: int, target: str = "/sse?interval=0.05") -> HTTPClient:
    """An SSE client that has received the response head and a first event."""
    client = await HTTPClient.open(port)
    client.request(target)
    response = await asyncio.wait_for(client.response(), 10)
    assert response.status_code == 200
    await asyncio.wait_for(client.read_until(b"\n\n"), 10)
    return client


async def sse_ends_cleanly(client: HTTPClient) -> bytes:
    """Read the stream to its end; fail if the chunked body is cut."""
    try:
        await client.read_to_end()
        await client.wait_closed()
    finally:
        client.close()
    return bytes(client.body)


async def test_sigterm_ends_every_sse_stream_and_websocket_cleanly() -> None:
    async with app_process("--graceful-timeout", str(GRACE), "--max-connections", "500") as proc:
        sse_clients = await asyncio.gather(*(open_sse(proc.port) for _ in range(STREAMS)))
        ws_clients = await asyncio.gather(
            *(
                websockets.connect(f"ws://127.0.0.1:{proc.port}/ws-stream", ping_interval=None)
                for _ in range(STREAMS)
            )
        )
        for ws in ws_clients:
            await asyncio.wait_for(ws.recv(), 10)  # streaming

        async def ws_until_closed(ws: websockets.ClientConnection) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    pass
            await ws.wait_closed()

        sse_done = [asyncio.create_task(sse_ends_cleanly(c)) for c in sse_clients]
        ws_done = [asyncio.create_task(ws_until_closed(ws)) for ws in ws_clients]
        proc.signal(signal.SIGTERM)
        code = await proc.wait(timeout=GRACE + 1)
        assert code == 0, "".join(proc.log)
        bodies = await asyncio.wait_for(asyncio.gather(*sse_done), 5)
        await asyncio.wait_for(asyncio.gather(*ws_done), 5)

    retry = f"retry: {RETRY_MS}\n\n".encode()
    for body in bodies:
        # Events up to the signal, then the final event and retry, then 0\r\n\r\n
        # (read_to_end() got h11's EndOfMessage: the chunked terminator arrived).
        assert body.startswith(b"id: 0\ndata: 0\n\n")
        assert body.endswith(SHUTDOWN_EVENT + retry)
    for ws in ws_clients:
        # The server's Close 1001, answered by the client: a complete handshake.
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
        assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1001
        assert ws.protocol.close_rcvd_then_sent
    assert "shutdown complete" in "".join(proc.log)


async def test_idle_keepalive_closes_at_once_and_ignored_shutdown_is_cut_at_grace() -> None:
    async with app_process("--graceful-timeout", str(GRACE)) as proc:
        stubborn = await open_sse(proc.port, "/sse-stubborn?interval=0.05")
        idle = await HTTPClient.open(proc.port)
        idle.request("/health")
        assert (await asyncio.wait_for(idle.response(), 5)).status_code == 200
        await asyncio.wait_for(idle.read_to_end(), 5)  # now idle between requests

        loop = asyncio.get_running_loop()
        proc.signal(signal.SIGTERM)
        signalled = loop.time()
        # Closed at once: well before the grace deadline that still holds the
        # stubborn stream (and the process) open.
        await asyncio.wait_for(idle.wait_closed(), GRACE - 1)
        assert proc.proc is not None and proc.proc.returncode is None
        with pytest.raises(h11.RemoteProtocolError):
            await asyncio.wait_for(stubborn.read_to_end(), GRACE + 1)
        assert loop.time() - signalled >= GRACE - 0.1  # not cut before the deadline
        assert SHUTDOWN_EVENT not in stubborn.body
        code = await proc.wait(timeout=GRACE + 1 - (loop.time() - signalled))
        assert code == 0
        stubborn.close()
        idle.close()
    assert "cutting them" in "".join(proc.log)


async def test_second_signal_aborts_at_once() -> None:
    async with app_process("--graceful-timeout", "60", "--ws-close-timeout", "60") as proc:
        stubborn = await open_sse(proc.port, "/sse-stubborn?interval=0.05")
        silent = await WSClient.open(proc.port, "/ws-stream?interval=0.05")
        proc.signal(signal.SIGTERM)
        # The Close 1001 shows the first signal was handled; this client never
        # answers it, and the stubborn stream ignores it: only an abort ends them.
        close = await asyncio.wait_for(silent.next_control(), 5)
        assert isinstance(close, CloseConnection) and close.code == 1001
        proc.signal(signal.SIGINT)
        assert await proc.wait(timeout=2) == 0
        await asyncio.wait_for(silent.wait_closed(), 2)
        with pytest.raises(h11.RemoteProtocolError):
            await asyncio.wait_for(stubborn.read_to_end(), 2)
        stubborn.close()
        silent.close()


async def test_websocket_that_never_answers_close_is_cut_at_close_timeout() -> None:
    close_timeout = 0.5
    args = ("--graceful-timeout", "30", "--ws-close-timeout", str(close_timeout))
    async with app_process(*args) as proc:
        silent = await WSClient.open(proc.port, "/ws-stream?interval=0.05")
        loop = asyncio.get_running_loop()
        proc.signal(signal.SIGTERM)
        close = await asyncio.wait_for(silent.next_control(), 5)
        closing = loop.time()
        assert isinstance(close, CloseConnection) and close.code == 1001
        await asyncio.wait_for(silent.wait_closed(), close_timeout + 1)
        assert loop.time() - closing >= close_timeout - 0.1  # it did wait for our Close
        # Nothing else was open: the process ends long before its grace deadline.
        assert await proc.wait(timeout=1) == 0
        silent.close()


async def test_request_arriving_during_shutdown_gets_503_and_connection_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client in the middle of sending its request head when shutdown starts.

    Runs in-process: the test must know the server has read the first part of the
    head before shutdown starts, which it learns from the connection's
    ``data_received``. ``request_shutdown()`` is what the signal handler calls.
    """
    got_data = asyncio.Event()
    original = HTTPConnection.data_received

    def data_received(self: HTTPConnection, data: bytes) -> None:
        original(self, data)
        got_data.set()

    monkeypatch.setattr(HTTPConnection, "data_received", data_received)

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, b"ok")

    async with serve(handler, graceful_timeout=5) as running:
        client = await HTTPClient.open(running.port)
        client.writer.write(b"GET / HTTP/1.1\r\n")
        await asyncio.wait_for(got_data.wait(), 5)
        running.server.request_shutdown()
        client.writer.write(b"host: x\r\n\r\n")
        client.conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        response = await asyncio.wait_for(client.response(), 5)
        assert response.status_code == 503
        assert (b"connection", b"close") in response.headers
        await asyncio.wait_for(client.read_to_end(), 5)
        await asyncio.wait_for(client.wait_closed(), 5)
        client.close()
        await asyncio.wait_for(running.server.wait_shutdown(), 5)


async def test_stream_started_during_shutdown_still_ends_cleanly() -> None:
    """A request parsed before the signal whose handler opens its SSE stream or
    WebSocket after it: the new stream is shut down like the others, not left to
    run into the grace deadline."""
    waiting: list[Exchange] = []
    both_waiting = asyncio.Event()
    release = asyncio.Event()

    async def handler(exchange: Exchange) -> None:
        waiting.append(exchange)
        if len(waiting) == 2:
            both_waiting.set()
        await release.wait()  # e.g. waiting for an engine slot
        if exchange.is_websocket_upgrade:
            ws = await exchange.accept_websocket()
            while True:
                await ws.send("tick")
                await asyncio.sleep(0.05)
        sse = await exchange.start_sse()
        while True:
            await sse.send(b"data: tick\n\n")
            await asyncio.sleep(0.05)

    async with serve(handler, graceful_timeout=30, sse_retry_ms=RETRY_MS) as running:
        client = await HTTPClient.open(running.port)
        client.request("/")
        ws_client_task = asyncio.create_task(WSClient.open(running.port, "/"))
        await asyncio.wait_for(both_waiting.wait(), 5)
        running.server.request_shutdown()
        release.set()
        assert (await asyncio.wait_for(client.response(), 5)).status_code == 200
        await asyncio.wait_for(client.read_to_end(), 5)
        assert client.body.endswith(SHUTDOWN_EVENT + f"retry: {RETRY_MS}\n\n".encode())
        ws_client = await asyncio.wait_for(ws_client_task, 5)
        close = await asyncio.wait_for(ws_client.next_control(), 5)
        assert isinstance(close, CloseConnection) and close.code == 1001
        ws_client.send(close.response())
        await asyncio.wait_for(ws_client.wait_closed(), 5)
        # Both ended well before the 30 s grace deadline.
        await asyncio.wait_for(running.server.wait_shutdown(), 5)
        client.close()
        ws_client.close()
