"""Properties of the HTTP/1.1 policies (rawstream.sansio.http), on generated requests.

Requests are generated as bytes and parsed by h11 first, exactly as the server does,
so every property holds for what h11 can actually hand to :func:`parse_request`.
"""

from __future__ import annotations

import itertools
import string
from http import HTTPStatus

import h11
from hypothesis import assume, given
from hypothesis import strategies as st

from rawstream.sansio.http import (
    METHODS,
    BadRequest,
    Request,
    chunk,
    error_body,
    framing_error,
    head_size,
    parse_request,
    reason,
    version_error,
    version_error_in_line,
)

TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))

tokens = st.text(TCHAR, min_size=1, max_size=12)
methods = st.one_of(
    st.sampled_from(sorted(METHODS)),
    st.sampled_from(["get", "Post", "CONNECT", "TRACE", "BREW", "PROPFIND"]),
    tokens,
)
origin_targets = st.builds(
    lambda path, query: "/" + path + (f"?{query}" if query is not None else ""),
    st.text(VCHAR.replace("?", ""), max_size=30),
    st.none() | st.text(VCHAR, max_size=20),
)
absolute_targets = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}{path}",
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    st.from_regex(r"[a-z0-9.-]{1,12}(:[0-9]{1,5})?", fullmatch=True),
    st.sampled_from(["", "/"]) | origin_targets,
)
targets = st.one_of(origin_targets, absolute_targets, st.just("*"), st.text(VCHAR, min_size=1))
versions = st.sampled_from(["1.1", "1.0", "1.2", "1.9", "2.0", "0.9", "3.0", "9.9"])
header_values = st.text(VCHAR + " \t", max_size=30).map(str.strip)
extra_headers = st.lists(
    st.tuples(tokens.filter(lambda n: n.lower() not in FRAMING), header_values), max_size=6
)
FRAMING = {"content-length", "transfer-encoding", "host"}


def wire_head(method: str, target: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    """A request head in canonical form: no optional whitespace, CRLF line ends."""
    lines = [f"{method} {target} HTTP/{version}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def h11_request(raw: bytes) -> h11.Request | None:
    """What h11 makes of ``raw``: its request event, or None if it refuses the head."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]]]:
    """A request head h11 accepts, and its headers as sent."""
    headers = [("Host", "x"), *draw(extra_headers)]
    framing = draw(
        st.sampled_from(
            [
                [],
                [("Content-Length", "0")],
                [("Transfer-Encoding", "chunked")],
                [("Content-Length", "0"), ("Transfer-Encoding", "chunked")],
            ]
        )
    )
    headers += framing
    headers = draw(st.permutations(headers))
    raw = wire_head(draw(methods), draw(targets), draw(versions), headers)
    return raw, headers


@given(requests())
def test_parse_request_returns_a_request_or_raises_bad_request(
    case: tuple[bytes, list[tuple[str, str]]],
) -> None:
    raw, _ = case
    event = h11_request(raw)
    assume(event is not None)
    assert event is not None
    try:
        request = parse_request(event)
    except BadRequest as exc:
        assert exc.status in (400, 501, 505), exc
        return
    assert request.method in METHODS
    assert request.http_version.startswith("1.")
    assert request.path.startswith("/") or (request.path == "*" and request.method == "OPTIONS")
    names = {name for name, _ in request.headers}
    assert not {b"content-length", b"transfer-encoding"} <= names
    assert str(request).startswith(f"{request.method} {request.target} HTTP/1.")


@given(methods, targets, versions, st.booleans())
def test_the_status_of_a_refused_request_is_the_first_rule_it_breaks(
    method: str, target: str, version: str, both_framings: bool
) -> None:
    headers = [("Host", "x"), ("Content-Length", "0")]
    if both_framings:
        headers.append(("Transfer-Encoding", "chunked"))
    event = h11_request(wire_head(method, target, version, headers))
    assume(event is not None)
    assert event is not None
    if not version.startswith("1."):
        expected: int | None = 505
    elif both_framings:
        expected = 400
    elif method not in METHODS:
        expected = 501
    elif target.startswith("/") or target.lower().startswith(("http://", "https://")):
        expected = None
    elif target == "*":
        expected = None if method == "OPTIONS" else 400
    else:
        expected = 400
    try:
        parse_request(event)
    except BadRequest as exc:
        assert exc.status == expected
    else:
        assert expected is None


@given(st.integers(0, 9), st.integers(0, 9))
def test_only_major_version_one_is_spoken(major: int, minor: int) -> None:
    error = version_error(f"{major}.{minor}".encode())
    assert (error is None) == (major == 1)
    if error is not None:
        assert error.status == 505


@given(st.binary(max_size=200))
def test_version_error_in_line_never_raises(line: bytes) -> None:
    error = version_error_in_line(line)
    assert error is None or error.status == 505


@given(methods, st.text(VCHAR, min_size=1, max_size=20), st.integers(0, 99), st.integers(0, 9))
def test_a_well_formed_line_of_another_major_version_is_505(
    method: str, target: str, major: int, minor: int
) -> None:
    line = f"{method} {target} HTTP/{major}.{minor}".encode()
    error = version_error_in_line(line)
    if major == 1:
        assert error is None
    else:
        assert error is not None and error.status == 505


@given(
    st.sampled_from(["1.0", "1.1"]),
    st.booleans(),
    st.booleans(),
    extra_headers,
)
def test_framing_error_exactly_when_framings_conflict_or_te_in_http10(
    version: str, content_length: bool, chunked: bool, headers: list[tuple[str, str]]
) -> None:
    headers = [("Host", "x"), *headers]
    if content_length:
        headers.append(("Content-Length", "0"))
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    event = h11_request(wire_head("POST", "/", version, headers))
    assert event is not None
    error = framing_error(event)
    expected = (content_length and chunked) or (chunked and version == "1.0")
    assert (error is not None) == expected
    assert error is None or error.status == 400


@given(requests())
def test_head_size_is_the_size_of_a_canonical_head(
    case: tuple[bytes, list[tuple[str, str]]],
) -> None:
    raw, _ = case
    event = h11_request(raw)
    assume(event is not None)
    assert event is not None
    assert head_size(event) == len(raw)


@given(requests(), st.integers(1, 4), st.data())
def test_head_size_never_exceeds_the_wire_with_optional_whitespace(
    case: tuple[bytes, list[tuple[str, str]]], spaces: int, data: st.DataObject
) -> None:
    raw, _ = case
    # Pad some header values with optional whitespace, which h11 strips.
    head, *lines = raw[:-4].split(b"\r\n")
    padded = [
        line.replace(b": ", b":" + b" " * spaces, 1) + b"\t" * data.draw(st.integers(0, 2))
        for line in lines
    ]
    wire = b"\r\n".join([head, *padded]) + b"\r\n\r\n"
    event = h11_request(wire)
    assume(event is not None)
    assert event is not None
    assert head_size(event) <= len(wire)


# --- chunked framing, against h11 -------------------------------------------------------


def h11_chunked_writer() -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
    return conn


@given(st.binary(max_size=5000))
def test_chunk_is_what_h11_writes_for_data(data: bytes) -> None:
    assert chunk(data) == h11_chunked_writer().send(h11.Data(data=data))


@given(st.lists(st.binary(max_size=300), max_size=10), st.lists(st.integers(0, 4000), max_size=6))
def test_chunks_round_trip_through_h11s_parser(pieces: list[bytes], cuts: list[int]) -> None:
    body = b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    conn = h11.Connection(h11.SERVER)
    received = bytearray()
    ended = False
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(raw[start:end])
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                ended = True
    assert ended
    assert bytes(received) == b"".join(pieces)


# --- the request value and small helpers -----------------------------------------------

raw_headers = st.lists(
    st.tuples(st.sampled_from([b"connection", b"upgrade", b"x-a"]), st.binary(max_size=30)),
    max_size=6,
)


@given(raw_headers, st.text(max_size=60))
def test_request_accessors_never_raise(headers: list[tuple[bytes, bytes]], query: str) -> None:
    request = Request("GET", "/", "/", query, headers, "1.1")
    for name in (b"connection", b"upgrade", b"x-a", b"absent"):
        first = request.header(name)
        assert first == next((v for k, v in headers if k == name), None)
        tokens = request.header_tokens(name)
        assert b"" not in tokens
        assert all(t == t.strip().lower() for t in tokens)
        expected = {t.strip().lower() for k, v in headers if k == name for t in v.split(b",")} - {
            b""
        }
        assert tokens == expected
    assert isinstance(request.query_params(), dict)


@given(st.integers(-1000, 10_000))
def test_every_status_has_a_reason_phrase(status: int) -> None:
    phrase = reason(status)
    assert phrase
    try:
        assert phrase == HTTPStatus(status).phrase.encode()
    except ValueError:
        assert phrase == b"Unknown"


@given(st.sampled_from([s.value for s in HTTPStatus if s.value >= 400]), st.text())
def test_error_body_names_the_status(status: int, message: str) -> None:
    body = error_body(status, message)
    assert body.startswith(f"{status} {HTTPStatus(status).phrase}: ".encode())
    assert body.endswith(b"\n")
