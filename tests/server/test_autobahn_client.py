"""Autobahn-style WebSocket cases driven by the ``autobahn`` package's raw frames.

Autobahn|Testsuite itself needs Python 2; its Python 3 library still exposes the
client protocol's ``sendFrame()``, which writes any frame, valid or not (reserved
bits, unknown opcodes, fragmented control frames). Each case sends frames right
after the opening handshake and records what the server answers and the close
code it sends. ``test_websocket_frames.py`` covers the same ground with frames
built by hand; this module checks it with an independent peer implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from tests.support import serve

TEXT, BINARY, CONTINUATION, CLOSE, PING = 1, 2, 0, 8, 9


async def echo(exchange: Exchange) -> None:
    ws = await exchange.accept_websocket()
    try:
        while True:
            await ws.send(await ws.receive())
    except WebSocketClosed:
        pass


@dataclass
class Outcome:
    """What the server did in one case."""

    messages: list[bytes | str] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Case = Callable[[WebSocketClientProtocol], None]


async def run_case(port: int, case: Case, expect_messages: int = 0) -> Outcome:
    """Open a WebSocket with autobahn, play ``case`` and wait for the server's close."""
    outcome = Outcome()

    class Client(WebSocketClientProtocol):  # type: ignore[misc]
        def onOpen(self) -> None:
            case(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            outcome.messages.append(payload if isBinary else payload.decode())
            if len(outcome.messages) == expect_messages:
                self.sendClose(1000)

        def onPong(self, payload: bytes) -> None:
            outcome.pongs.append(payload)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            outcome.close_code = self.remoteCloseCode
            if not outcome.closed.done():
                outcome.closed.set_result(None)

    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
    factory.protocol = Client
    # Let the client send what the cases need; the server is under test, not autobahn.
    factory.setProtocolOptions(failByDrop=False, utf8validateIncoming=False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(factory, "127.0.0.1", port)
    try:
        await asyncio.wait_for(outcome.closed, 10)
    finally:
        transport.close()
    return outcome


def frames(*specs: tuple[int, bytes, dict[str, object]]) -> Case:
    """A case that sends the given frames ``(opcode, payload, options)`` in order."""

    def play(client: WebSocketClientProtocol) -> None:
        for opcode, payload, options in specs:
            client.sendFrame(opcode, payload, **options)

    return play


FAILURES: list[tuple[str, Case, int]] = [
    ("reserved bit 1 on text", frames((TEXT, b"hi", {"rsv": 4})), 1002),
    ("reserved bits on binary", frames((BINARY, b"hi", {"rsv": 7})), 1002),
    ("opcode 3 (reserved data)", frames((3, b"", {})), 1002),
    ("opcode 11 (reserved control)", frames((11, b"", {})), 1002),
    ("fragmented ping", frames((PING, b"x", {"fin": False})), 1002),
    ("ping of 126 bytes", frames((PING, b"x" * 126, {})), 1002),
    ("continuation first", frames((CONTINUATION, b"x", {})), 1002),
    ("text inside a text", frames((TEXT, b"a", {"fin": False}), (TEXT, b"b", {})), 1002),
    ("invalid UTF-8", frames((TEXT, b"\xce\xba\xe1\xbd", {})), 1007),
    (
        "invalid UTF-8 across fragments",
        frames((TEXT, b"\xce", {"fin": False}), (CONTINUATION, b"\xff", {})),
        1007,
    ),
    ("close code 1004", frames((CLOSE, (1004).to_bytes(2, "big"), {})), 1002),
    ("close payload of 1 byte", frames((CLOSE, b"\x03", {})), 1002),
]


@pytest.mark.parametrize(("name", "case", "code"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_protocol_failure(name: str, case: Case, code: int) -> None:
    async with serve(echo) as running:
        outcome = await run_case(running.port, case)
        assert outcome.close_code == code, name
        assert outcome.messages == []
        # The server goes on serving everyone else.
        healthy = await run_case(running.port, frames((TEXT, b"still here", {})), 1)
        assert healthy.messages == ["still here"]
        assert healthy.close_code == 1000


async def test_fragmented_text_with_a_ping_in_between() -> None:
    async with serve(echo) as running:
        case = frames(
            (TEXT, b"frag", {"fin": False}),
            (PING, b"between", {}),
            (CONTINUATION, b"mented", {}),
        )
        outcome = await run_case(running.port, case, expect_messages=1)
        assert outcome.messages == ["fragmented"]
        assert outcome.pongs == [b"between"]
        assert outcome.close_code == 1000


async def test_binary_chopped_into_tiny_tcp_writes() -> None:
    payload = bytes(range(256)) * 40
    async with serve(echo) as running:
        case = frames((BINARY, payload, {"chopsize": 7}))
        outcome = await run_case(running.port, case, expect_messages=1)
        assert outcome.messages == [payload]
        assert outcome.close_code == 1000
