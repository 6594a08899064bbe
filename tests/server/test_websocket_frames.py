"""Autobahn-style WebSocket cases, driven with hand-built frames (RFC 6455 section 5).

Autobahn|Testsuite itself does not run here, so these cases follow its sections
(1 framing, 2 pings, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close,
9 limits) with a frame builder written from RFC 6455 section 5.2. The raw frames
make every byte visible, masking included.

Each protocol-error case asserts the close code the server sends, that the TCP
connection is then closed, and that the same server accepts the next client.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from tests.support import Running, open_raw, read_response_head, serve

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 4096


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """One client frame (RFC 6455 section 5.2).

    ::

        |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
        |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
        |N|V|V|V|       |S|             |   (if payload len==126/127)   |
        | |1|2|3|       |K|             |                               |
        + - - - - - - - - - - - - - - - + - - - - - - - - - - - - - - - +
        |  Masking-key (if MASK set to 1)  |        Payload Data        |

    "All frames sent from client to server have this bit set to 1" (5.1); the
    payload is XORed with the 4-byte key, octet i with key octet i mod 4 (5.3).
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    masked_payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked_payload


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    """A Close frame: a 2-byte code and a UTF-8 reason (section 5.5.1)."""
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


@dataclass(frozen=True)
class Frame:
    """One frame from the server (unmasked, section 5.1)."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if self.payload else None


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5.0) -> Frame:
    async def read() -> Frame:
        b0, b1 = await reader.readexactly(2)
        assert b1 & 0x80 == 0, "a server must not mask its frames (section 5.1)"
        assert b0 & 0x70 == 0, "no extension was negotiated: RSV bits must be 0"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        return Frame(bool(b0 & 0x80), b0 & 0x0F, await reader.readexactly(length))

    return await asyncio.wait_for(read(), timeout)


async def echo(exchange: Exchange) -> None:
    websocket = await exchange.accept_websocket()
    try:
        while True:
            await websocket.send(await websocket.receive())
    except WebSocketClosed:
        pass


@asynccontextmanager
async def echo_server() -> AsyncIterator[Running]:
    async with serve(echo, ws_max_message_bytes=MAX_MESSAGE, ws_ping_interval=0) as running:
        yield running


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_raw(port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await read_response_head(reader)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 section 1.3: the accept value for the RFC's own example key.
    assert b"\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    return reader, writer


async def expect_closed(reader: asyncio.StreamReader, code: int | None) -> None:
    """The next frame is a Close with ``code``, then TCP ends."""
    received = await read_frame(reader)
    assert received.opcode == CLOSE, received
    assert received.close_code == code
    assert await asyncio.wait_for(reader.read(), 5) == b"", "TCP was not closed"


async def assert_still_serving(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(frame(TEXT, b"still here"))
    assert await read_frame(reader) == Frame(True, TEXT, b"still here")
    writer.write(close_frame(1000))
    await expect_closed(reader, 1000)
    writer.close()


# ---------------------------------------------------------------------- echo
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_echo_sizes(opcode: int, size: int) -> None:
    """Autobahn 1.1/1.2: the 7-bit, 16-bit and 64-bit length encodings."""
    payload = b"*" * size
    async with serve(echo, ws_max_message_bytes=1 << 20, ws_ping_interval=0) as running:
        reader, writer = await connect(running.port)
        writer.write(frame(opcode, payload))
        assert await read_frame(reader) == Frame(True, opcode, payload)
        writer.write(close_frame(1000))
        await expect_closed(reader, 1000)
        writer.close()


async def test_message_of_exactly_the_limit_in_utf8_bytes_is_accepted() -> None:
    """``--ws-max-message-bytes`` is a byte count: 1365 three-byte characters and one
    ASCII character are 4096 bytes, the limit, split over two fragments."""
    payload = ("\u20ac" * 1365 + "x").encode()
    assert len(payload) == MAX_MESSAGE
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(frame(TEXT, payload[:2000], fin=False) + frame(CONT, payload[2000:]))
        assert await read_frame(reader) == Frame(True, TEXT, payload)
        writer.close()


async def test_frames_sent_with_the_handshake_are_not_lost() -> None:
    """Frames right behind the upgrade request reach wsproto (h11's trailing_data)."""
    async with echo_server() as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + frame(TEXT, b"early")
        )
        await read_response_head(reader)
        assert await read_frame(reader) == Frame(True, TEXT, b"early")
        writer.close()


async def test_fragmented_message_with_interleaved_ping() -> None:
    """Autobahn 5.6-5.8: control frames may be injected between fragments (5.4)."""
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(
            frame(TEXT, b"Hello", fin=False)
            + frame(PING, b"ping!")
            + frame(CONT, b", ", fin=False)
            + frame(CONT, "wörld".encode())
        )
        assert await read_frame(reader) == Frame(True, PONG, b"ping!")
        assert await read_frame(reader) == Frame(True, TEXT, "Hello, wörld".encode())
        writer.close()


async def test_utf8_split_inside_a_character_is_valid() -> None:
    """Autobahn 6.2: a code point split between two fragments is still valid UTF-8."""
    encoded = "κόσμε".encode()
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(frame(TEXT, encoded[:3], fin=False) + frame(CONT, encoded[3:]))
        assert await read_frame(reader) == Frame(True, TEXT, encoded)
        writer.close()


@pytest.mark.parametrize("payload", [b"", b"x" * 125], ids=["empty", "125-bytes"])
async def test_ping_gets_pong_with_same_payload(payload: bytes) -> None:
    """Autobahn 2.1-2.4; section 5.5.3: the Pong carries the Ping's payload."""
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(frame(PING, payload))
        assert await read_frame(reader) == Frame(True, PONG, payload)
        writer.close()


async def test_unsolicited_pong_is_ignored() -> None:
    """Autobahn 2.7; section 5.5.3: "A response to an unsolicited Pong frame is not expected."""
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(frame(PONG, b"unasked") + frame(TEXT, b"after"))
        assert await read_frame(reader) == Frame(True, TEXT, b"after")
        writer.close()


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        (close_frame(1000, b"bye"), 1000),
        (close_frame(1001), 1001),
        (close_frame(1012), 1012),  # "Service Restart", registered with IANA
        (close_frame(3000), 3000),  # registered with IANA
        (close_frame(4999), 4999),  # private use
        (close_frame(None), None),  # no code: answered with no code (1005 is never sent)
    ],
    ids=["1000-with-reason", "1001", "1012", "3000", "4999", "no-code"],
)
async def test_close_handshake_echoes_the_code(sent: bytes, echoed: int | None) -> None:
    """Autobahn 7.1, 7.7; section 5.5.1: the endpoint answers Close with Close."""
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(sent)
        await expect_closed(reader, echoed)
        writer.close()
        await assert_still_serving(running)


# ---------------------------------------------------------------------- failures
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009
BAD_UTF8 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"  # a surrogate

FAILURES: list[tuple[str, bytes, int]] = [
    # Autobahn 3: "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is negotiated"
    ("rsv1-set", frame(TEXT, b"x", rsv=0b100), PROTOCOL_ERROR),
    ("rsv2-set", frame(TEXT, b"x", rsv=0b010), PROTOCOL_ERROR),
    ("rsv3-set", frame(TEXT, b"x", rsv=0b001), PROTOCOL_ERROR),
    ("rsv-on-ping", frame(PING, b"x", rsv=0b111), PROTOCOL_ERROR),
    # Autobahn 4: reserved opcodes (section 5.2: "3-7 are reserved for further
    # non-control frames", "B-F are reserved for further control frames").
    *[(f"opcode-{op}", frame(op, b"x"), PROTOCOL_ERROR) for op in (3, 4, 5, 6, 7)],
    *[(f"opcode-{op}", frame(op, b"x"), PROTOCOL_ERROR) for op in (11, 12, 13, 14, 15)],
    # Autobahn 5.1/5.2: "Control frames themselves MUST NOT be fragmented."
    ("fragmented-ping", frame(PING, b"x", fin=False), PROTOCOL_ERROR),
    ("fragmented-close", frame(CLOSE, b"\x03\xe8", fin=False), PROTOCOL_ERROR),
    # Autobahn 2.5: "All control frames MUST have a payload length of 125 bytes or less"
    ("ping-126-bytes", frame(PING, b"x" * 126), PROTOCOL_ERROR),
    ("close-126-bytes", close_frame(1000, b"x" * 124), PROTOCOL_ERROR),
    # Autobahn 5.3-5.5: continuation with nothing to continue; a new message mid-message.
    ("continuation-first", frame(CONT, b"x"), PROTOCOL_ERROR),
    ("continuation-fin-first", frame(CONT, b"x", fin=False), PROTOCOL_ERROR),
    ("text-inside-text", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), PROTOCOL_ERROR),
    # Section 5.1: "The server MUST close the connection upon receiving a frame that
    # is not masked [...] with a status code of 1002".
    ("unmasked", frame(TEXT, b"x", masked=False), PROTOCOL_ERROR),
    # Autobahn 6: invalid UTF-8 in a text message -> 1007 (section 8.1).
    ("utf8-invalid", frame(TEXT, BAD_UTF8), INVALID_DATA),
    ("utf8-invalid-byte", frame(TEXT, b"\xff"), INVALID_DATA),
    ("utf8-overlong", frame(TEXT, b"\xc0\xaf"), INVALID_DATA),
    (
        "utf8-invalid-across-fragments",
        frame(TEXT, BAD_UTF8[:11], fin=False) + frame(CONT, BAD_UTF8[11:]),
        INVALID_DATA,
    ),
    ("utf8-truncated-at-end", frame(TEXT, b"ok\xce", fin=True), INVALID_DATA),
    # Autobahn 9 (limits): a message over --ws-max-message-bytes -> 1009.
    ("too-big-one-frame", frame(BINARY, b"x" * (MAX_MESSAGE + 1)), TOO_BIG),
    (
        "too-big-fragmented",
        frame(TEXT, b"x" * 3000, fin=False) + frame(CONT, b"x" * 3000),
        TOO_BIG,
    ),
    # The limit counts UTF-8 bytes, not characters: 1366 characters, 4098 bytes.
    ("too-big-in-bytes", frame(TEXT, ("\u20ac" * 1366).encode()), TOO_BIG),
    (
        "too-big-in-bytes-fragmented",
        frame(TEXT, ("\u20ac" * 700).encode(), fin=False) + frame(CONT, ("\u20ac" * 700).encode()),
        TOO_BIG,
    ),
    # Autobahn 7.3.2: "If there is a body, the first two bytes of the body MUST be a
    # 2-byte unsigned integer" -> a 1-byte body is a protocol error.
    ("close-1-byte", frame(CLOSE, b"\x03"), PROTOCOL_ERROR),
    # Autobahn 7.9: codes never valid on the wire (section 7.4.1, 7.4.2).
    *[
        (f"close-code-{code}", close_frame(code), PROTOCOL_ERROR)
        for code in (0, 999, 1004, 1005, 1006, 1016, 1100, 2999, 5000, 65535)
    ],
    # Autobahn 7.5.1: a close reason that is not UTF-8 -> 1007, as wsproto answers;
    # section 7.1.6 says the reason "is not guaranteed to be human readable" but
    # 5.5.1 requires it to be UTF-8, and 1007 is the code for non-UTF-8 data.
    (
        "close-reason-not-utf8",
        close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80"),
        INVALID_DATA,
    ),
]


@pytest.mark.parametrize(("sent", "code"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
async def test_protocol_failure(sent: bytes, code: int) -> None:
    async with echo_server() as running:
        reader, writer = await connect(running.port)
        writer.write(sent)
        await expect_closed(reader, code)
        writer.close()
        await assert_still_serving(running)


async def test_failure_with_more_data_behind_still_delivers_the_close() -> None:
    """Frames behind a bad one are discarded; the Close frame must not be lost to RST."""
    async with echo_server() as running:
        for _ in range(5):
            reader, writer = await connect(running.port)
            writer.write(frame(TEXT, b"x", rsv=0b100) + frame(BINARY, b"y" * 4000) * 200)
            await expect_closed(reader, PROTOCOL_ERROR)
            writer.close()
