"""Deadlines that close slow or idle clients (slowloris and friends).

Each test runs a server with one short deadline and long others, so only the
deadline under test can close the connection; the test then awaits the close (EOF,
with a generous timeout) and checks the bytes that came before it. Nothing here
measures how long anything took: on a shared machine only the outcome is stable.
"""

from __future__ import annotations

import asyncio

from rawstream.server.exchange import Exchange
from tests.support import open_raw, read_response_head, read_until_close, serve

SHORT = 0.3
LONG = 60.0
#: Long enough for a loaded machine to get round to a deadline of SHORT seconds.
PATIENCE = 20.0
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def echo(exchange: Exchange) -> None:
    body = await exchange.body()
    await exchange.respond(200, b"got " + body, content_type=b"text/plain")


async def test_trickled_head_gets_408_at_the_head_deadline() -> None:
    """A client sending one header byte at a time never completes its head."""
    async with serve(echo, head_timeout=SHORT, keepalive_timeout=LONG) as running:
        reader, writer = await open_raw(running.port)
        endless = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        received = b""
        for byte in endless:
            writer.write(bytes([byte]))
            try:
                # The read paces the trickle: the next byte goes when none came back.
                received = await asyncio.wait_for(reader.read(), 0.02)
                break
            except TimeoutError:
                continue
        else:
            received = await read_until_close(reader, PATIENCE)
        writer.close()
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"\r\nconnection: close\r\n" in received
        assert running.server.statistics().timeouts_total == {"head": 1}


async def test_fresh_connection_that_sends_nothing_is_closed_silently() -> None:
    async with serve(echo, head_timeout=SHORT, keepalive_timeout=LONG) as running:
        reader, writer = await open_raw(running.port)
        assert await read_until_close(reader, PATIENCE) == b""
        writer.close()
        assert running.server.statistics().timeouts_total == {"head": 1}


async def test_idle_keepalive_connection_is_closed() -> None:
    async with serve(echo, head_timeout=LONG, keepalive_timeout=SHORT) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        # The response, then nothing: the close comes from the keep-alive deadline.
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
        assert everything.startswith(b"HTTP/1.1 200 OK\r\n")
        assert everything.endswith(b"\r\n\r\ngot hi")
        assert running.server.statistics().timeouts_total == {"keepalive": 1}


async def test_keepalive_deadline_gives_way_to_the_head_deadline() -> None:
    """The first byte of the next request starts the head deadline (module docstring)."""
    async with serve(echo, head_timeout=SHORT, keepalive_timeout=LONG) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response_head(reader)
        await reader.readexactly(len(b"got "))
        writer.write(b"GET / HT")  # a second request that never completes
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
        assert everything.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert running.server.statistics().timeouts_total == {"head": 1}


async def test_stalled_request_body_gets_408() -> None:
    handler_saw: list[BaseException] = []

    async def reader_handler(exchange: Exchange) -> None:
        try:
            await exchange.body()
        except BaseException as exc:
            handler_saw.append(exc)
            raise
        await exchange.respond(200)

    async with serve(reader_handler, head_timeout=LONG, body_timeout=SHORT) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
        assert everything.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"\r\nconnection: close\r\n" in everything
        assert [type(e).__name__ for e in handler_saw] == ["CancelledError"]
        assert running.server.statistics().timeouts_total == {"body": 1}


async def test_websocket_handshake_deadline() -> None:
    """An upgrade the handler does not complete in time is closed, its handler cancelled."""
    cancelled = asyncio.Event()

    async def slow_accept(exchange: Exchange) -> None:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), LONG)  # never accepts
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serve(slow_accept, head_timeout=LONG, ws_handshake_timeout=SHORT) as running:
        reader, writer = await open_raw(running.port)
        writer.write(UPGRADE)
        assert await read_until_close(reader, PATIENCE) == b""
        writer.close()
        await asyncio.wait_for(cancelled.wait(), PATIENCE)
        assert running.server.statistics().timeouts_total == {"handshake": 1}


async def test_a_completed_handshake_is_not_cut_by_its_deadline() -> None:
    """After the 101 the handshake deadline is gone: the WebSocket stays open."""

    async def accept(exchange: Exchange) -> None:
        if exchange.request.path == "/stall":
            await asyncio.wait_for(asyncio.Event().wait(), LONG)
        websocket = await exchange.accept_websocket()
        message = await websocket.receive()  # arrives only after the deadline passed
        await websocket.send(message)
        await websocket.close()

    async with serve(
        accept, head_timeout=LONG, ws_handshake_timeout=SHORT, ws_ping_interval=0
    ) as running:
        reader, writer = await open_raw(running.port)
        writer.write(UPGRADE)
        await read_response_head(reader)
        # Outlive the handshake deadline: a later connection whose handler stalls is
        # closed by its own, later deadline; only then does this client send.
        other_reader, other_writer = await open_raw(running.port)
        other_writer.write(UPGRADE.replace(b"/ws", b"/stall"))
        assert await read_until_close(other_reader, PATIENCE) == b""
        other_writer.close()
        writer.write(bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi")  # masked "hi", zero key
        assert await asyncio.wait_for(reader.readexactly(4), PATIENCE) == b"\x81\x02hi"
        writer.close()
