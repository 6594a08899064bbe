"""WebSocket keepalive: a healthy client survives many ping rounds, a dead one is closed.

The regression this guards against (DESIGN section 3): a server that stops reading
after each message its handler has not consumed never sees the client's pong, and
kills a healthy connection with 1011 "keepalive ping timeout" in the middle of a
long stream. rawstream keeps parsing while messages wait, so pongs are counted.

The server reports its pong count inside the stream it sends, so the client awaits
ping rounds as they happen instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets
from wsproto.events import CloseConnection, Ping

from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from tests.server.apps import WSClient
from tests.support import serve

PING = {"ws_ping_interval": 0.2, "ws_ping_timeout": 0.3}
ROUNDS = 5


@pytest.mark.parametrize(("handler_reads", "sent"), [(False, 10), (True, 200)])
async def test_client_sending_during_a_long_stream_is_not_closed_for_keepalive(
    handler_reads: bool, sent: int
) -> None:
    """``handler_reads=False``: messages wait unread (under the backlog bound) while
    the handler streams, the case that kills connections on uvicorn. ``True``: more
    messages than the backlog bound, consumed while the handler streams."""
    received: list[str | bytes] = []

    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()

        async def consume() -> None:
            with contextlib.suppress(WebSocketClosed):
                while True:
                    received.append(await ws.receive())

        reader = asyncio.create_task(consume()) if handler_reads else None
        seq = 0
        while ws.pongs_received < ROUNDS:
            await ws.send(json.dumps({"seq": seq, "pongs": ws.pongs_received}))
            seq += 1
            await asyncio.sleep(0.01)
        if reader is not None:
            reader.cancel()
        else:
            # The stream is over: now the handler reads what waited meanwhile.
            received.extend([await ws.receive() for _ in range(sent)])
        await ws.send(json.dumps({"done": len(received)}))
        await ws.close(1000, "stream complete")

    async with serve(handler, **PING) as running:
        async with websockets.connect(running.ws_url, ping_interval=None) as client:

            async def chatter() -> None:
                for i in range(sent):
                    await client.send(f"client message {i}")
                    await asyncio.sleep(0.005)

            talking = asyncio.create_task(chatter())
            pongs = 0
            async with asyncio.timeout(ROUNDS * 0.2 + 5):
                async for raw in client:
                    message = json.loads(raw)
                    if "done" in message:
                        done = message["done"]
                        break
                    assert message["pongs"] >= pongs
                    pongs = message["pongs"]
            talking.cancel()
            await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_code == 1000
    assert pongs >= ROUNDS - 1
    # Every message the client sent in the meantime was kept, in order.
    assert done == len(received) > 0
    assert received == [f"client message {i}" for i in range(len(received))]
    if not handler_reads:
        assert len(received) == sent


async def test_client_that_never_answers_pings_gets_1011_and_tcp_close() -> None:
    handler_saw: list[int | None] = []
    handler_ended = asyncio.Event()

    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()
        try:
            await ws.receive()
        finally:
            # WebSocketClosed or CancelledError, whichever reaches it first.
            handler_saw.append(ws.close_code)
            handler_ended.set()

    async with serve(handler, **PING) as running:
        client = await WSClient.open(running.port, "/")
        try:
            ping = await asyncio.wait_for(client.next_control(), 5)
            assert isinstance(ping, Ping)  # and it is never answered
            close = await asyncio.wait_for(client.next_control(), 5)
            assert isinstance(close, CloseConnection)
            assert close.code == 1011
            # Failing the connection closes TCP without waiting for our Close.
            await asyncio.wait_for(client.wait_closed(), 5)
            await asyncio.wait_for(handler_ended.wait(), 5)
        finally:
            client.close()
        stats = running.server.statistics()
    assert handler_saw == [1011]
    assert stats.ws_close_codes_total == {1011: 1}
