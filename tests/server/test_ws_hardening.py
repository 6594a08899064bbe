"""A WebSocket peer that floods control frames, or picks odd close codes, costs a bound.

* A peer that sends pings and never reads: RFC 6455 section 5.5.3 allows answering
  only the most recent ping ("If an endpoint receives a Ping frame and has not yet
  sent Pong frame(s) in response to previous Ping frame(s), the endpoint MAY elect
  to send a Pong frame for only the most recently processed Ping frame"), so while
  writing is paused only the newest pong waits, and once such a peer has sent more
  than ``--write-high-water`` bytes behind the pause, reading stops
  (``ReadPause.WRITE_BACKLOG``) until it reads again.
* Close codes the peer chooses (3000-4999) are counted by range, so a peer cannot
  create one metric series per code.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

import psutil
import pytest
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from rawstream.server.flow import FlowControl, ReadPause
from rawstream.server.websocket import WebSocket
from tests.server.apps import WSClient, silent_websocket
from tests.server.test_websocket_frames import CLOSE, PING, frame
from tests.support import ServerProcess, serve

MiB = 1 << 20

# --- the flood, against a real server process -------------------------------------------

#: What the flooding client may send at most: bytes, seconds in all, and seconds a
#: single 1 MiB write may take before the server counts as no longer reading.
FLOOD_BYTES = 200 * MiB
FLOOD_SECONDS = 15.0
STALLED_SECONDS = 3.0
#: The server's RSS may grow by at most this much (it grew by hundreds of MiB when
#: every ping was answered at once).
MAX_GROWTH = 20 * MiB


def _loop_flag() -> str:
    """The server process runs on the same kind of loop as this test."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _flood(sock: object, chunk: bytes) -> tuple[int, str]:
    """Send ``chunk`` again and again; return the bytes sent and why it stopped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    sent = 0
    while sent < FLOOD_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            return sent, "time budget used"
        try:
            await asyncio.wait_for(
                loop.sock_sendall(sock, chunk),  # type: ignore[arg-type]
                min(left, STALLED_SECONDS),
            )
        except TimeoutError:
            return sent, "server stopped reading"
        sent += len(chunk)
    return sent, "byte budget sent"


async def test_ping_flood_from_a_client_that_never_reads_keeps_memory_bounded() -> None:
    server = await ServerProcess(
        "--engine", "fake", "--loop", _loop_flag(), "--no-access-log",
        "--write-stall-timeout", "120",
    ).start()  # fmt: skip
    try:
        assert server.proc is not None
        process = psutil.Process(server.proc.pid)
        sock = await silent_websocket(server.port, "/v1/ws")
        try:
            one = frame(PING, b"p" * 125)  # masked, the largest control frame
            chunk = one * (MiB // len(one))
            before = process.memory_info().rss
            sent, why = await _flood(sock, chunk)
            after = process.memory_info().rss
        finally:
            sock.close()
    finally:
        await server.stop()
    growth = after - before
    print(
        f"\nping flood ({_loop_flag()}): sent {sent / MiB:.0f} MiB of pings ({why}); "
        f"server RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB (+{growth / MiB:.1f} MiB)"
    )
    assert growth < MAX_GROWTH


# --- pongs and reading while writes are paused, in this process ------------------------


async def _fill(ws: WebSocket) -> None:
    """Send until the transport pauses writing (the client reads nothing meanwhile)."""
    flow = ws.conn.flow
    assert flow is not None
    while not flow.write_paused:
        await ws.send("x" * 65536)


async def _read_until_text(client: WSClient, text: str) -> list[bytes]:
    """Read everything up to the text message ``text``; return the pong payloads."""
    pongs: list[bytes] = []
    async with asyncio.timeout(30):
        while True:
            event = await client.next_event()
            assert event is not None, "server closed the connection"
            if isinstance(event, Pong):
                pongs.append(event.payload)
            elif isinstance(event, TextMessage) and event.data == text:
                return pongs


async def test_pings_while_writes_are_paused_get_one_pong_for_the_latest() -> None:
    paused = asyncio.Event()
    marker: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()
        await _fill(ws)
        paused.set()
        message = await ws.receive()  # read after the pings: they were all parsed
        assert ws.conn.flow is not None
        marker.set_result(ws.conn.flow.write_paused)
        assert message == "marker"
        await ws.send("after marker")
        with contextlib.suppress(WebSocketClosed):
            await ws.receive()

    async with serve(handler, ws_ping_interval=0) as running:
        client = await WSClient.open(running.port, "/", rcvbuf=4096)
        try:
            await asyncio.wait_for(paused.wait(), 30)
            for i in range(50):
                client.send(Ping(payload=b"%03d" % i))
            client.send(TextMessage(data="marker"))
            # All 50 pings were processed while nothing could be written.
            assert await asyncio.wait_for(marker, 30) is True
            pongs = await _read_until_text(client, "after marker")
        finally:
            client.close()
    assert pongs == [b"049"]


async def test_a_client_that_sends_but_does_not_read_stops_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``--write-high-water`` bytes received behind paused writes, reading stops,
    control frames included; it resumes (and the latest pong goes out) when the
    client reads again."""
    backlog_paused = asyncio.Event()
    original: Callable[[FlowControl, ReadPause], None] = FlowControl.pause_reading

    def spy(self: FlowControl, reason: ReadPause) -> None:
        original(self, reason)
        if reason & ReadPause.WRITE_BACKLOG:
            backlog_paused.set()

    monkeypatch.setattr(FlowControl, "pause_reading", spy)
    paused = asyncio.Event()
    received: list[str | bytes] = []
    resumed_when_read: list[bool] = []

    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()
        await _fill(ws)
        paused.set()
        received.append(await ws.receive())
        assert ws.conn.flow is not None
        resumed_when_read.append(not ws.conn.flow.read_paused & ReadPause.WRITE_BACKLOG)
        await ws.send("after")
        with contextlib.suppress(WebSocketClosed):
            await ws.receive()

    async with serve(handler, ws_ping_interval=0, write_high_water=16384) as running:
        client = await WSClient.open(running.port, "/", rcvbuf=4096)
        try:
            await asyncio.wait_for(paused.wait(), 30)
            # Far more than the high-water mark plus one read of the transport.
            for i in range(8000):
                client.send(Ping(payload=b"%04d" % i + b"." * 121))
            client.send(TextMessage(data="marker"))
            await asyncio.wait_for(backlog_paused.wait(), 30)
            assert received == [], "the message behind the flood was read"
            pongs = await _read_until_text(client, "after")
        finally:
            client.close()
    assert received == ["marker"]
    assert resumed_when_read == [True]
    # Pings were answered while writes were paused only by the latest one at each
    # resume: far fewer pongs than pings, and the last ping's among them.
    assert 1 <= len(pongs) < 8000
    assert pongs[-1] == b"7999" + b"." * 121


# --- close codes the peer picks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "counted"),
    [(1000, 1000), (1012, 1012), (3000, 3000), (3999, 3000), (4000, 4000), (4321, 4000)],
)
async def test_peer_close_codes_are_counted_by_range(code: int, counted: int) -> None:
    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()
        with contextlib.suppress(WebSocketClosed):
            await ws.receive()

    async with serve(handler, ws_ping_interval=0) as running:
        client = await WSClient.open(running.port, "/")
        try:
            client.writer.write(frame(CLOSE, struct.pack("!H", code)))
            answer = await asyncio.wait_for(client.next_event(), 5)
            assert isinstance(answer, CloseConnection) and answer.code == code
            await asyncio.wait_for(client.wait_closed(), 5)
        finally:
            client.close()
        assert running.server.statistics().ws_close_codes_total == {counted: 1}
