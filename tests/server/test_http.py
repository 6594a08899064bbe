"""HTTP/1.1 features on the wire: keep-alive, pipelining, bodies, HEAD, 100-continue,
HTTP/1.0, the parsing policies of :mod:`rawstream.sansio.http`, SSE framing, --trace.

Requests are written by hand and responses parsed by a small reader here, so every
byte the server sends is checked, not what a client library makes of it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from rawstream.server.exchange import Exchange
from tests.support import open_raw, read_response_head, read_until_close, serve


@dataclass
class Response:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    status_line, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(b":") for ln in lines)]
    return status_line, headers


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False, timeout: float = 5.0
) -> Response:
    """One response: its head, then a Content-Length or chunked body."""
    status_line, headers = parse_head(await read_response_head(reader, timeout))
    response = Response(status_line, headers, b"")
    if head_only:
        return response
    if response.header(b"transfer-encoding") == b"chunked":
        chunks = []
        while True:
            size = int(await asyncio.wait_for(reader.readline(), timeout), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        response.body = b"".join(chunks)
    elif (length := response.header(b"content-length")) is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
    return response


async def echo(exchange: Exchange) -> None:
    """Echo method, path, query and body; ``/status/N`` answers N."""
    request = exchange.request
    if request.path.startswith("/status/"):
        await exchange.respond(int(request.path.rsplit("/", 1)[1]), b"")
        return
    if request.path == "/fail":
        raise RuntimeError("handler bug")
    body = await exchange.body()
    x_fold = request.header(b"x-fold") or b""
    text = f"{request.method} {request.path} ?{request.query} {x_fold.decode()}|".encode()
    await exchange.respond(200, text + body, content_type=b"text/plain")


async def test_keepalive_serves_many_requests_on_one_connection() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        for i in range(5):
            writer.write(f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = await read_response(reader)
            assert response.status_line == b"HTTP/1.1 200 OK"
            assert response.body == f"GET /r{i} ? |".encode()
            assert response.header(b"connection") is None
        writer.close()
        assert running.server.statistics().accepted_total == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
            b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        bodies = [(await read_response(reader)).body for _ in range(3)]
        assert bodies == [b"GET /one ? |", b"POST /two ? |body", b"GET /three ? |"]
        assert await read_until_close(reader) == b""
        writer.close()


@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        (b"Content-Length: 11\r\n", b"hello world"),
        (
            b"Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
        ),
        (b"Transfer-Encoding: chunked\r\n", b"b\r\nhello world\r\n0\r\nX-Trailer: t\r\n\r\n"),
    ],
    ids=["content-length", "chunked-with-extension", "chunked-with-trailer"],
)
async def test_request_bodies_are_echoed(framing: bytes, sent: bytes) -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + sent)
        response = await read_response(reader)
        assert response.body == b"POST /e ? |hello world"
        # keep-alive after a fully read body
        writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == b"GET /after ? |"
        writer.close()


async def test_head_has_the_headers_of_get_and_no_body() -> None:
    async def page(exchange: Exchange) -> None:
        if exchange.request.path == "/next":
            await echo(exchange)
        else:
            await exchange.respond(200, b"<p>the page</p>", content_type=b"text/html")

    async with serve(page) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
        get = await read_response(reader)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_response(reader, head_only=True)
        assert head.status_line == b"HTTP/1.1 200 OK"
        assert get.body == b"<p>the page</p>"
        assert head.headers == get.headers
        # The next bytes are the next response: the HEAD response had no body.
        nxt = await read_response(reader)
        assert nxt.body == b"GET /next ? |"
        writer.close()


async def test_expect_100_continue_sent_when_the_handler_reads_the_body() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await read_response_head(reader)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        response = await read_response(reader)
        assert response.body == b"POST /up ? |hello"
        writer.close()


async def test_expect_100_continue_not_sent_when_the_handler_rejects() -> None:
    async def reject(exchange: Exchange) -> None:
        await exchange.respond(401, b"no", headers=[(b"www-authenticate", b"Bearer")])

    async with serve(reject) as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        everything = await read_until_close(reader)
        assert everything.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b"100 Continue" not in everything
        # The body was never read, so the connection cannot carry another request.
        assert b"\r\nconnection: close\r\n" in everything.lower()
        writer.close()


async def test_every_response_carries_a_reason_phrase() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        for status, phrase in [
            (200, b"OK"),
            (201, b"Created"),
            (204, b"No Content"),
            (404, b"Not Found"),
            (429, b"Too Many Requests"),
            (503, b"Service Unavailable"),
            (599, b"Unknown"),
        ]:
            writer.write(f"GET /status/{status} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = await read_response(reader)
            assert response.status_line == b"HTTP/1.1 %d %s" % (status, phrase)
        writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_response(reader)
        assert response.status_line == b"HTTP/1.1 500 Internal Server Error"
        writer.close()


# ---------------------------------------------------------------------- policies
async def test_bare_lf_line_ends_are_accepted() -> None:
    """Policy (sansio/http.py): a bare LF ends a line (RFC 9112 section 2.2 MAY)."""
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /lf HTTP/1.1\nHost: x\nContent-Length: 2\n\nok")
        assert (await read_response(reader)).body == b"POST /lf ? |ok"
        writer.close()


async def test_obs_fold_is_replaced_with_a_space() -> None:
    """Policy: obs-fold becomes SP (RFC 9112 section 5.2), the request is served."""
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /fold HTTP/1.1\r\nHost: x\r\nX-Fold: first\r\n\tsecond\r\n\r\n")
        assert (await read_response(reader)).body == b"GET /fold ? first second|"
        writer.close()


async def test_absolute_form_target_is_routed_by_its_path() -> None:
    """Policy: absolute-form is served by path and query (RFC 9112 section 3.2.2)."""
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET http://elsewhere.example/abs/p%20q?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == b"GET /abs/p q ?a=1 |"
        writer.close()


async def test_asterisk_form_options() -> None:
    """Policy: ``OPTIONS *`` reaches the handler with path ``*``."""
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == b"OPTIONS * ? |"
        writer.close()


async def test_http10_client_gets_a_response_and_a_close() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /old HTTP/1.0\r\n\r\n")
        everything = await read_until_close(reader)
        status_line, headers = parse_head(everything.partition(b"\r\n\r\n")[0])
        assert status_line == b"HTTP/1.1 200 OK"
        assert (b"connection", b"close") in headers
        assert everything.endswith(b"\r\n\r\nGET /old ? |")
        writer.close()


async def test_http10_client_gets_a_close_delimited_stream() -> None:
    """No chunked coding for HTTP/1.0 (RFC 9112 section 7): the body ends at close."""

    async def stream(exchange: Exchange) -> None:
        sse = await exchange.start_sse()
        await sse.send(b"data: one\n\n")
        await sse.end(b"data: two\n\n")

    async with serve(stream) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /events HTTP/1.0\r\n\r\n")
        everything = await read_until_close(reader)
        head, _, body = everything.partition(b"\r\n\r\n")
        _, headers = parse_head(head)
        assert all(k != b"transfer-encoding" for k, _ in headers)
        assert body == b"data: one\n\ndata: two\n\n"
        writer.close()


async def test_connection_close_is_honoured() -> None:
    async with serve(echo) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        everything = await read_until_close(reader)
        assert everything.endswith(b"GET /bye ? |")
        assert b"\r\nconnection: close\r\n" in everything.lower()
        writer.close()


async def test_sse_headers_first_bytes_at_once_and_chunked_terminator() -> None:
    go_on = asyncio.Event()

    async def stream(exchange: Exchange) -> None:
        sse = await exchange.start_sse()
        await asyncio.wait_for(go_on.wait(), 5)  # nothing more until the client saw the head
        await sse.send(b"data: hello\n\n")
        await sse.end(b"data: [DONE]\n\n")

    async with serve(stream) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line, headers = parse_head(await read_response_head(reader))
        assert status_line == b"HTTP/1.1 200 OK"
        assert (b"content-type", b"text/event-stream; charset=utf-8") in headers
        assert (b"cache-control", b"no-cache") in headers
        assert (b"x-accel-buffering", b"no") in headers
        assert (b"transfer-encoding", b"chunked") in headers
        assert all(k not in (b"content-length", b"content-encoding") for k, _ in headers)
        go_on.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert rest == b"d\r\ndata: hello\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        # The stream ended cleanly: the connection serves the next request.
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_until_close(reader)).endswith(b"0\r\n\r\n")
        writer.close()


async def test_trace_logs_inbound_outbound_and_state_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rawstream.trace")
    async with serve(echo, trace=True) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        await read_response(reader)
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "rawstream.trace"]
    assert any(line.startswith("#1 < Request(method=b'POST'") for line in lines), lines
    assert any(line.startswith("#1 < Data(b'hi')") for line in lines), lines
    assert any(line.startswith("#1 > Response(") and "status_code=200" in line for line in lines)
    assert any(line.startswith("#1 > Data(b'POST /t ? |hi')") for line in lines), lines
    assert any(line.startswith("#1 = h11 client IDLE->SEND_BODY") for line in lines), lines
    assert any(line.startswith("#1 = accepted from") for line in lines), lines
