"""Malformed and hostile requests, sent as raw bytes over a real socket.

Every case is a request the server must refuse. The table gives the exact status it
answers; each test then checks the three things that make a refusal safe:

* the status line carries that status and its reason phrase, and the response says
  ``Connection: close``;
* the server closes the connection after it (read until EOF), and never answers
  anything sent behind the bad request (no smuggled second response);
* the same server then serves a new client normally.

Where h11 detects the error, its ``error_status_hint`` is the status; where
rawstream decides (see :mod:`rawstream.sansio.http` and
:mod:`rawstream.sansio.upgrade`), the case's comment names the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rawstream.sansio.http import reason
from rawstream.server.exchange import Exchange
from tests.support import open_raw, read_until_close, serve

MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 20_000
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
#: Sent behind some bad requests: it must never be answered.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


async def echo(exchange: Exchange) -> None:
    """Echo the body; accept WebSocket upgrades (and answer nothing on them)."""
    if exchange.is_websocket_upgrade:
        websocket = await exchange.accept_websocket()
        await websocket.close()
        return
    body = await exchange.body()
    await exchange.respond(200, b"echo " + exchange.request.path.encode() + b" " + body)


def post(*headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A POST to ``/`` with ``headers`` (each ``b"Name: value"``) and ``body``."""
    head = b"POST / HTTP/" + version + b"\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def upgrade(*headers: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    """A WebSocket upgrade request with ``headers`` after ``Host``."""
    lines = b"".join(h + b"\r\n" for h in headers)
    return method + b" /ws HTTP/" + version + b"\r\nHost: x\r\n" + lines + b"\r\n"


WS_OK = (b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + KEY)


@dataclass(frozen=True)
class Case:
    """One bad request and the status it gets."""

    name: str
    request: bytes
    status: int
    headers: tuple[bytes, ...] = ()  #: lines the response head must contain
    tail: bytes = field(default=SMUGGLED)  #: sent in the same write, never answered


CASES = [
    # --- request smuggling: framing the server and a proxy could read differently
    # RFC 9112 6.3: both framings present -> 400 and close (rawstream; h11 accepts it).
    Case(
        "cl-and-te",
        post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    Case(
        "te-and-cl",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 40", body=b"0\r\n\r\n"),
        400,
    ),
    # RFC 9112 6.1: unknown transfer coding -> 501 (h11).
    Case("te-xchunked", post(b"Transfer-Encoding: xchunked"), 501),
    Case("te-chunked-not-last", post(b"Transfer-Encoding: chunked, identity"), 501),
    Case("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    Case("te-twice", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 501),
    Case("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (rawstream).
    Case(
        "te-in-http10", post(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", version=b"1.0"), 400
    ),
    # RFC 9110 8.6: Content-Length values that disagree or are not 1*DIGIT (h11).
    Case(
        "cl-duplicate-different",
        post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"),
        400,
    ),
    Case("cl-list-different", post(b"Content-Length: 3, 4", body=b"abcd"), 400),
    Case("cl-plus-sign", post(b"Content-Length: +3", body=b"abc"), 400),
    Case("cl-minus-sign", post(b"Content-Length: -3", body=b"abc"), 400),
    Case("cl-inner-space", post(b"Content-Length: 1 0", body=b"abc"), 400),
    Case("cl-hex", post(b"Content-Length: 0x3", body=b"abc"), 400),
    Case("cl-empty", post(b"Content-Length: ", body=b"abc"), 400),
    # --- chunked bodies (RFC 9112 7.1): chunk-size = 1*HEXDIG, then CRLF (h11)
    Case(
        "chunk-size-not-hex",
        post(b"Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "chunk-size-negative",
        post(b"Transfer-Encoding: chunked", body=b"-3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "chunk-size-0x", post(b"Transfer-Encoding: chunked", body=b"0x3\r\nabc\r\n0\r\n\r\n"), 400
    ),
    Case(
        "chunk-size-overflow",
        post(b"Transfer-Encoding: chunked", body=b"f" * 24 + b"\r\nabc\r\n"),
        400,
    ),
    Case(
        "chunk-missing-crlf", post(b"Transfer-Encoding: chunked", body=b"3\r\nabcX0\r\n\r\n"), 400
    ),
    # --- sizes
    # h11 bounds an incomplete head (431); rawstream a complete one sent at once.
    Case(
        "head-too-large", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431
    ),
    Case(
        "head-too-large-incomplete",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000,
        431,
        tail=b"",
    ),
    Case(
        "head-many-headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1200 + b"\r\n", 431
    ),
    # RFC 9110 15.5.14: 413 before reading the body (rawstream), even while it is sent.
    Case("cl-over-limit", post(b"Content-Length: 30000"), 413, tail=b""),
    Case(
        "cl-over-limit-body-sent",
        post(b"Content-Length: 300000", body=b"a" * 300_000),
        413,
        tail=b"",
    ),
    # h11 refuses a Content-Length of more than 20 digits as malformed: 400, not 413.
    Case("cl-enormous", post(b"Content-Length: 99999999999999999999999999"), 400, tail=b""),
    Case(
        "chunked-over-limit",
        post(b"Transfer-Encoding: chunked", body=(b"1000\r\n" + b"a" * 0x1000 + b"\r\n") * 8),
        413,
        tail=b"",
    ),
    # --- request line (RFC 9112 3)
    Case("garbage-tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    Case("missing-version", b"GET /\r\nHost: x\r\n\r\n", 400),
    Case("version-lowercase", b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    Case("two-spaces", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # RFC 9112 2.2: empty lines before a request line are ignored (test_hardening.py),
    # but a bare CR is no empty line, and a flood of them is bounded like a head.
    Case("bare-cr-before-request-line", b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("empty-lines-flood", b"\r\n" * 5000, 431),
    Case("bare-cr", b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
    # RFC 9110 15.6.6: a major version other than 1 -> 505 (rawstream).
    Case("http-2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    Case("http-3", b"GET / HTTP/3\r\nHost: x\r\n\r\n", 505),
    Case("http-0.9", b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # RFC 9110 9.1: methods are case-sensitive; an unknown one is 501 (rawstream).
    Case("lowercase-method", b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    Case("unknown-method", b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    Case("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501),
    Case("trace", b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    # RFC 9112 3.2: origin-, absolute- or asterisk-form (OPTIONS only) (rawstream).
    Case("target-not-slash", b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("asterisk-with-get", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # --- header fields (RFC 9112 5, RFC 9110 5.5) (h11)
    Case("header-without-colon", b"GET / HTTP/1.1\r\nHost: x\r\nBogus\r\n\r\n", 400),
    Case("space-before-colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    Case("nul-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n", 400),
    Case("nul-in-name", b"GET / HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n", 400),
    Case("obs-fold-first-line", b"GET / HTTP/1.1\r\n x\r\nHost: x\r\n\r\n", 400),
    # RFC 9112 3.2: "A server MUST respond with a 400 [...] to any HTTP/1.1 request
    # message that lacks a Host header field and to any request message that
    # contains more than one Host header field".
    Case("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two-hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    # --- WebSocket handshakes (RFC 6455 4.2.1, 4.4) (rawstream)
    Case("ws-missing-key", upgrade(*WS_OK[:2], b"Sec-WebSocket-Version: 13"), 400),
    Case(
        "ws-key-3-bytes",
        upgrade(*WS_OK[:2], b"Sec-WebSocket-Key: YWJj", b"Sec-WebSocket-Version: 13"),
        400,
    ),
    Case(
        "ws-key-not-base64",
        upgrade(
            *WS_OK[:2], b"Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!", b"Sec-WebSocket-Version: 13"
        ),
        400,
    ),
    Case(
        "ws-version-8",
        upgrade(*WS_OK, b"Sec-WebSocket-Version: 8"),
        426,
        (b"sec-websocket-version: 13",),
    ),
    Case("ws-version-missing", upgrade(*WS_OK), 426, (b"sec-websocket-version: 13",)),
    Case(
        "ws-post",
        upgrade(*WS_OK, b"Sec-WebSocket-Version: 13", method=b"POST"),
        405,
        (b"allow: GET",),
    ),
    Case("ws-no-connection-upgrade", upgrade(*WS_OK[::2], b"Sec-WebSocket-Version: 13"), 400),
    Case("ws-http10", upgrade(*WS_OK, b"Sec-WebSocket-Version: 13", version=b"1.0"), 400),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_refused_and_closed(case: Case) -> None:
    async with serve(
        echo, max_header_bytes=MAX_HEADER_BYTES, max_body_bytes=MAX_BODY_BYTES
    ) as running:
        reader, writer = await open_raw(running.port)
        writer.write(case.request + case.tail)
        try:
            response = await read_until_close(reader)
        finally:
            writer.close()
        head, _, _body = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        assert status_line == b"HTTP/1.1 %d %s" % (case.status, reason(case.status))
        lines = [line.lower() for line in header_lines]
        assert b"connection: close" in lines
        for expected in case.headers:
            assert expected.lower() in lines
        assert response.count(b"HTTP/1.1 ") == 1, "a request behind the bad one was answered"

        # The same server serves the next client normally.
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        writer.write(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await read_until_close(reader)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"echo /next ok" in response
        assert response.endswith(b"echo /last ")
