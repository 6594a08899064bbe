"""Connection hardening: the whole-body deadline, connection gauges that add up, and
three details of RFC 9112: ``Connection: close`` followed by more bytes, a client
that half-closes after its request, and empty lines before a request line.

Like ``test_timeouts.py``, deadline tests run a server with one short deadline and
long others and await the close (EOF, with a generous timeout); nothing measures
how long anything took.

Some tests need the server to have *read* what the client sent (an EOF, bytes
behind a request) before a handler goes on. :func:`barrier` gives that order
without sleeping: a complete request and response on a second connection. The
server's loop reads every ready socket in one poll, and the first client's bytes
were in the server's socket before the second client connected, so by the time
the second response arrives the first connection has seen them.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from wsproto.events import CloseConnection

from rawstream.sansio.http import skip_empty_lines
from rawstream.server.connection import ConnState, HTTPConnection
from rawstream.server.exchange import Exchange
from rawstream.server.server import Server
from tests.server.apps import HTTPClient, WSClient
from tests.support import open_raw, read_response_head, read_until_close, serve

SHORT = 0.3
LONG = 60.0
#: Long enough for a loaded machine to get round to a deadline of SHORT seconds.
PATIENCE = 20.0
#: Pace of a trickling client: well under every per-read timeout of these tests.
TRICKLE = 0.02


async def barrier(port: int) -> None:
    """Return once the server has read what was already sent to it (module docstring)."""
    reader, writer = await open_raw(port)
    writer.write(b"GET /barrier HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_close(reader, PATIENCE)).startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()


def responses(everything: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Split Content-Length responses: (status line, lower-cased head, body) each."""
    found = []
    rest = everything
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        status_line, _, fields = head.partition(b"\r\n")
        lower = fields.lower()
        length = int(lower.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        found.append((status_line, lower, rest[:length]))
        rest = rest[length:]
    return found


class Paths:
    """A handler that answers ``<path> <body>`` and records the paths it served.

    ``/wait`` first waits for :attr:`release`; :attr:`started` is set when it does.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, exchange: Exchange) -> None:
        path = exchange.request.path
        if path != "/barrier":
            self.seen.append(path)
        try:
            if path.startswith("/wait"):
                self.started.set()
                await asyncio.wait_for(self.release.wait(), PATIENCE)
            body = await exchange.body()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await exchange.respond(200, path.encode() + b" " + body, content_type=b"text/plain")


# ---------------------------------------------------------------------- body deadline
async def trickle(writer: asyncio.StreamWriter, until: asyncio.Future[bytes], most: int) -> int:
    """Send one body byte every TRICKLE seconds until ``until`` is done; the count."""
    sent = 0
    while sent < most and not until.done():
        writer.write(b"a")
        sent += 1
        await asyncio.wait({until}, timeout=TRICKLE)
    return sent


async def test_trickled_body_gets_408_at_the_body_deadline() -> None:
    """Each byte comes well within --body-timeout; the whole body never does."""
    handler = Paths()
    limits = {"head_timeout": LONG, "body_timeout": LONG, "body_deadline": SHORT}
    async with serve(handler, **limits) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        everything = asyncio.ensure_future(read_until_close(reader, PATIENCE))
        # At TRICKLE s a byte this would take minutes; the deadline cuts it long before.
        await trickle(writer, everything, 5000)
        received = await everything
        writer.close()
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"\r\nconnection: close\r\n" in received
        await asyncio.wait_for(handler.cancelled.wait(), PATIENCE)
        assert running.server.statistics().timeouts_total == {"body_deadline": 1}


async def test_body_deadline_ends_with_the_body() -> None:
    """A body that arrived in time is not cut later, however long its handler takes;
    and a trickled body that completes in time is served."""
    handler = Paths()
    limits = {"head_timeout": LONG, "body_timeout": LONG, "body_deadline": SHORT}
    async with serve(handler, **limits) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /wait HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.wait_for(handler.started.wait(), PATIENCE)
        # A later connection's body deadline fires: this one's has passed too.
        late_reader, late_writer = await open_raw(running.port)
        late_writer.write(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
        late = await read_until_close(late_reader, PATIENCE)
        late_writer.close()
        assert late.startswith(b"HTTP/1.1 408 ")
        handler.release.set()
        ((status_line, _, body),) = responses(await read_response_whole(reader))
        assert (status_line, body) == (b"HTTP/1.1 200 OK", b"/wait ok")
        # Keep-alive: the next request's body has a deadline of its own.
        writer.write(b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
        for byte in b"abc":
            writer.write(bytes([byte]))
        ((status_line, _, body),) = responses(await read_response_whole(reader))
        assert (status_line, body) == (b"HTTP/1.1 200 OK", b"/next abc")
        writer.close()
        assert running.server.statistics().timeouts_total == {"body_deadline": 1}


async def read_response_whole(reader: asyncio.StreamReader) -> bytes:
    """One Content-Length response, head and body."""
    head = await read_response_head(reader, PATIENCE)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    return head + await asyncio.wait_for(reader.readexactly(length), PATIENCE)


# ---------------------------------------------------------------------- gauges
class Gauges:
    """Checks ``Server.statistics().connections`` against the open connections.

    :meth:`check` compares the per-state counts with the states of the connections
    in ``server.connections`` (so they also sum to ``len(server.connections)`` and
    none is negative). :meth:`gone` awaits the next connection to unregister.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._gone: asyncio.Queue[int] = asyncio.Queue()
        #: Every moment the counts disagreed with the connections, as (when, counts).
        self.drift: list[tuple[str, dict[str, int]]] = []
        register, unregister, state_changed = (
            server.register,
            server.unregister,
            server.state_changed,
        )

        def register_and_check(conn: HTTPConnection) -> bool:
            accepted = register(conn)
            self._record(f"register #{conn.id}")
            return accepted

        def unregister_and_tell(conn: HTTPConnection) -> None:
            unregister(conn)
            self._record(f"unregister #{conn.id}")
            self._gone.put_nowait(conn.id)

        def state_changed_and_check(conn: HTTPConnection, old: ConnState, new: ConnState) -> None:
            state_changed(conn, old, new)
            self._record(f"#{conn.id} {old.value}->{new.value}")

        server.register = register_and_check  # type: ignore[method-assign]
        server.unregister = unregister_and_tell  # type: ignore[method-assign]
        server.state_changed = state_changed_and_check  # type: ignore[method-assign]

    def _counts_match(self) -> bool:
        counts = self.server.statistics().connections
        live = collections.Counter(conn.state.value for conn in self.server.connections)
        return counts == {state.value: live[state.value] for state in ConnState}

    def _record(self, when: str) -> None:
        if not self._counts_match():
            self.drift.append((when, self.server.statistics().connections))

    def check(self, **expected: int) -> None:
        counts = self.server.statistics().connections
        assert self._counts_match(), counts
        assert sum(counts.values()) == len(self.server.connections)
        assert counts == {state.value: expected.get(state.value, 0) for state in ConnState}
        assert self.drift == []

    async def gone(self, count: int = 1) -> None:
        for _ in range(count):
            await asyncio.wait_for(self._gone.get(), PATIENCE)


async def gauge_app(exchange: Exchange) -> None:
    """``/sse``: one event, then open until the client leaves; ``/ws``: a WebSocket."""
    if exchange.request.path == "/sse":
        sse = await exchange.start_sse()
        await sse.send(b"data: first\n\n")
        await asyncio.get_running_loop().create_future()
    elif exchange.request.path == "/ws":
        ws = await exchange.accept_websocket()
        await ws.wait_closed()
    else:
        await exchange.respond(200, await exchange.body(), content_type=b"text/plain")


async def test_gauges_add_up_under_rejections() -> None:
    """Connections refused over --max-connections are in no gauge."""
    async with serve(gauge_app, max_connections=3) as running:
        gauges = Gauges(running.server)
        idle = await HTTPClient.open(running.port)
        idle.request("/")
        await idle.response()
        await idle.read_to_end()
        gauges.check(idle=1)
        stream = await HTTPClient.open(running.port)
        stream.request("/sse")
        await stream.response()
        await asyncio.wait_for(stream.read_until(b"data: first\n\n"), PATIENCE)
        gauges.check(idle=1, streaming=1)
        ws = await WSClient.open(running.port, "/ws")
        gauges.check(idle=1, streaming=1, websocket=1)
        for _ in range(4):
            reader, writer = await open_raw(running.port)
            refused = await read_until_close(reader, PATIENCE)
            writer.close()
            assert refused.startswith(b"HTTP/1.1 503 ")
            await gauges.gone()
            gauges.check(idle=1, streaming=1, websocket=1)
        assert running.server.statistics().rejected_total == 4

        idle.close()
        await gauges.gone()
        gauges.check(streaming=1, websocket=1)
        stream.close()
        await gauges.gone()
        gauges.check(websocket=1)
        ws.send(CloseConnection(code=1000))
        await ws.wait_closed()
        await gauges.gone()
        gauges.check()
        ws.close()


async def test_gauges_follow_keepalive_active_and_closes() -> None:
    handler = Paths()
    async with serve(handler) as running:
        gauges = Gauges(running.server)
        reader, writer = await open_raw(running.port)
        for i in range(3):
            writer.write(f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await read_response_whole(reader)
            gauges.check(idle=1)
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(handler.started.wait(), PATIENCE)
        gauges.check(active=1)
        handler.release.set()
        await read_response_whole(reader)
        gauges.check(idle=1)
        # A refused request: the connection lingers (closing) until the client closes.
        writer.write(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
        assert (await read_until_close(reader, PATIENCE)).startswith(b"HTTP/1.1 505 ")
        gauges.check(closing=1)
        writer.close()
        await gauges.gone()
        gauges.check()
        # Connection: close, and a client that closes an idle connection.
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await read_until_close(reader, PATIENCE)
        writer.close()
        await gauges.gone()
        gauges.check()
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response_whole(reader)
        writer.close()
        await gauges.gone()
        gauges.check()


# ---------------------------------------------------------------------- Connection: close
CLOSE_THEN_MORE = (
    b"POST /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    b"GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n"
    b"not even HTTP\r\n\r\n"
)


async def test_connection_close_then_more_bytes_in_the_same_write() -> None:
    """RFC 9112 section 9.6: the request with "close" gets its complete response; the
    server "MUST NOT process any further requests received on that connection"."""
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(CLOSE_THEN_MORE)
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    ((status_line, head, body),) = responses(everything)
    assert status_line == b"HTTP/1.1 200 OK"
    assert b"connection: close" in head
    assert body == b"/last hi"
    assert handler.seen == ["/last"]


async def test_connection_close_then_more_bytes_while_it_is_answered() -> None:
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.wait_for(handler.started.wait(), PATIENCE)
        writer.write(b"GET /ignored HTTP/1.1\r\nHost: x\r\n\r\nmore garbage\r\n\r\n")
        await writer.drain()
        await barrier(running.port)
        handler.release.set()
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    ((status_line, head, body),) = responses(everything)
    assert status_line == b"HTTP/1.1 200 OK"
    assert b"connection: close" in head
    assert body == b"/wait "
    assert handler.seen == ["/wait"]


async def test_pipelined_requests_end_at_the_one_with_connection_close() -> None:
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    assert [(s, b) for s, _, b in responses(everything)] == [
        (b"HTTP/1.1 200 OK", b"/one "),
        (b"HTTP/1.1 200 OK", b"/two "),
    ]
    assert handler.seen == ["/one", "/two"]


# ---------------------------------------------------------------------- half-close
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /wait HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
        b"POST /wait HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbody\r\n0\r\n\r\n",
        b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /wait HTTP/1.0\r\n\r\n",
    ],
    ids=["get", "content-length", "chunked", "connection-close", "http10"],
)
async def test_half_close_after_a_complete_request_is_answered(request_bytes: bytes) -> None:
    """``shutdown(SHUT_WR)`` after the request: the response comes, then the close."""
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(request_bytes)
        await asyncio.wait_for(handler.started.wait(), PATIENCE)
        writer.write_eof()
        await barrier(running.port)  # the server has seen the EOF
        handler.release.set()
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    ((status_line, _, body),) = responses(everything)
    assert status_line == b"HTTP/1.1 200 OK"
    assert body == (b"/wait body" if b"POST" in request_bytes else b"/wait ")
    assert not handler.cancelled.is_set()


async def test_half_close_after_pipelined_requests_answers_each() -> None:
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            b"GET /cut-short HTTP/1.1\r\nHost"
        )
        writer.write_eof()
        await asyncio.wait_for(handler.started.wait(), PATIENCE)
        await barrier(running.port)
        handler.release.set()
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    assert [(s, b) for s, _, b in responses(everything)] == [
        (b"HTTP/1.1 200 OK", b"/wait "),
        (b"HTTP/1.1 200 OK", b"/two hi"),
    ]
    assert handler.seen == ["/wait", "/two"]


async def test_half_close_with_the_body_incomplete_cancels_the_handler() -> None:
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        writer.write_eof()
        assert await read_until_close(reader, PATIENCE) == b""
        writer.close()
        await asyncio.wait_for(handler.cancelled.wait(), PATIENCE)


@pytest.mark.parametrize("eof_before_stream", [False, True])
async def test_half_close_of_an_sse_client_cancels_the_stream(eof_before_stream: bool) -> None:
    """An SSE client that half-closes has left (connection module docstring), whether
    its EOF comes during the stream or before the handler started it."""
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def stream(exchange: Exchange) -> None:
        try:
            await asyncio.wait_for(release.wait(), PATIENCE)
            sse = await exchange.start_sse()
            await sse.send(b"data: first\n\n")
            await asyncio.get_running_loop().create_future()  # open until cancelled
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def app(exchange: Exchange) -> None:
        if exchange.request.path == "/barrier":
            await exchange.respond(200)
        else:
            await stream(exchange)

    async with serve(app) as running:
        client = await HTTPClient.open(running.port)
        client.request("/events")
        if eof_before_stream:
            client.writer.write_eof()
            await barrier(running.port)
            release.set()
        else:
            release.set()
            await client.response()
            await asyncio.wait_for(client.read_until(b"data: first\n\n"), PATIENCE)
            client.writer.write_eof()
        await asyncio.wait_for(cancelled.wait(), PATIENCE)
        await asyncio.wait_for(client.wait_closed(), PATIENCE)
        client.close()


# ---------------------------------------------------------------------- empty lines
@pytest.mark.parametrize(
    ("data", "cr_held", "expected"),
    [
        (b"GET /", False, (b"GET /", 0, False)),
        (b"\r\n\n\r\nGET /", False, (b"GET /", 5, False)),
        (b"\r\n\r", False, (b"", 2, True)),  # the last CR may start a CRLF
        (b"\nGET /", True, (b"GET /", 2, False)),  # ... and it did
        (b"GET /", True, (b"\rGET /", 0, False)),  # ... it did not: a bare CR
        (b"\r\rGET /", False, (b"\r\rGET /", 0, False)),
        (b"\r \r\n", False, (b"\r \r\n", 0, False)),
    ],
)
def test_skip_empty_lines(data: bytes, cr_held: bool, expected: tuple[bytes, int, bool]) -> None:
    assert skip_empty_lines(data, cr_held) == expected


@pytest.mark.parametrize(
    "before",
    [b"\r\n", b"\n", b"\r\n\r\n\n\r\n"],
    ids=["crlf", "lf", "several"],
)
async def test_empty_lines_before_the_first_request_are_ignored(before: bytes) -> None:
    """RFC 9112 section 2.2: "a server that is expecting to receive and parse a
    request-line SHOULD ignore at least one empty line (CRLF) received prior to the
    request-line"."""
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        writer.write(before + b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        ((status_line, _, body),) = responses(await read_response_whole(reader))
        writer.close()
    assert (status_line, body) == (b"HTTP/1.1 200 OK", b"/first ")


@pytest.mark.parametrize(
    "writes",
    [
        # The stray CRLF after a body, in the same write (the case RFC 9112 2.2 names).
        [b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\r\n", b"GET /b"],
        # Empty lines on an idle keep-alive connection, in writes of their own.
        [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n", b"\n", b"GET /b"],
        # A CRLF cut between two reads.
        [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"\r", b"\nGET /b"],
        # Pipelined behind the first request.
        [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\nGET /b"],
    ],
    ids=["after-body", "keepalive", "split-crlf", "pipelined"],
)
async def test_empty_lines_between_requests_are_ignored(writes: list[bytes]) -> None:
    handler = Paths()
    async with serve(handler) as running:
        reader, writer = await open_raw(running.port)
        first, *rest = writes
        writer.write(first)
        ((_, _, body),) = responses(await read_response_whole(reader))
        assert body.startswith(b"/a ")
        for data in rest:
            writer.write(data)
            await writer.drain()
            await barrier(running.port)  # one read each
        writer.write(b" HTTP/1.1\r\nHost: x\r\n\r\n")
        ((status_line, _, body),) = responses(await read_response_whole(reader))
        writer.close()
    assert (status_line, body) == (b"HTTP/1.1 200 OK", b"/b ")
    assert handler.seen == ["/a", "/b"]


async def test_trickled_empty_lines_do_not_outlive_the_head_deadline() -> None:
    """On a keep-alive connection the first empty line starts the head deadline."""
    async with serve(Paths(), head_timeout=SHORT, keepalive_timeout=LONG) as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response_whole(reader)
        everything = asyncio.ensure_future(read_until_close(reader, PATIENCE))
        for _ in range(5000):
            if everything.done():
                break
            writer.write(b"\r\n")
            await asyncio.wait({everything}, timeout=TRICKLE)
        received = await everything
        writer.close()
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert running.server.statistics().timeouts_total == {"head": 1}


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "one-write-each"])
async def test_a_flood_of_empty_lines_counts_against_the_head_size(split: bool) -> None:
    """Empty lines count against --max-header-bytes together with the head after them."""
    async with serve(Paths(), max_header_bytes=4096) as running:
        reader, writer = await open_raw(running.port)
        flood = [b"\r\n" * 1500, b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1500]
        for data in flood:
            writer.write(data)
            if split:
                await writer.drain()
                await barrier(running.port)
        writer.write(b"\r\n\r\n")
        everything = await read_until_close(reader, PATIENCE)
        writer.close()
    assert everything.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
