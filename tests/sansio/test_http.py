"""The HTTP/1.1 policies of rawstream.sansio.http, without sockets."""

from __future__ import annotations

import h11
import pytest

from rawstream.sansio.http import (
    BadRequest,
    chunk,
    error_body,
    head_size,
    parse_request,
    reason,
    version_error_in_line,
)


def request_event(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def parse(raw: bytes) -> object:
    try:
        return parse_request(request_event(raw))
    except BadRequest as exc:
        return exc.status


def test_origin_form_splits_path_and_query_and_decodes_the_path() -> None:
    request = parse_request(request_event(b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert (request.method, request.path, request.query) == ("GET", "/a b/c", "x=1&y=%20")
    assert request.query_params() == {"x": "1", "y": " "}
    assert str(request) == "GET /a%20b/c?x=1&y=%20 HTTP/1.1"


def test_absolute_form_is_routed_by_path_and_ignores_host() -> None:
    request = parse_request(
        request_event(b"GET HTTP://other:8080/v1/models?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    )
    assert (request.path, request.query) == ("/v1/models", "q=1")
    bare = parse_request(request_event(b"GET http://other HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert bare.path == "/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*"),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ],
)
def test_target_forms(raw: bytes, expected: object) -> None:
    result = parse(raw)
    assert (result if isinstance(result, int) else getattr(result, "path", None)) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\n\r\n", 505),
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    ],
    ids=["cl-and-te", "te-in-1.0", "http-2.0", "http-0.9", "lowercase", "trace", "connect"],
)  # fmt: skip
def test_refusals(raw: bytes, status: int) -> None:
    assert parse(raw) == status


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_known_methods_pass(method: str) -> None:
    raw = f"{method} / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n".encode()
    assert parse_request(request_event(raw)).method == method


def test_higher_minor_version_is_served_as_1x() -> None:
    request = parse_request(request_event(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"))
    assert request.http_version == "1.2"


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/3", 505),
        (b"GET / HTTP/2", 505),
        (b"GET / HTTP/10.0\r", 505),
        (b"GET / HTTP/1", None),  # major 1 but malformed: h11's 400 stands
        (b"GET /", None),
        (b"\x16\x03\x01 garbage", None),
        (b"GET / HTTP/3 extra", None),
    ],
)
def test_version_error_in_a_refused_line(line: bytes, status: int | None) -> None:
    error = version_error_in_line(line)
    assert (error.status if error else None) == status


def test_obs_fold_and_bare_lf_become_ordinary_headers() -> None:
    """h11's choices, kept by rawstream (see the module docstring)."""
    request = parse_request(request_event(b"GET / HTTP/1.1\nHost: h\nX-A: one\n  two\n\n"))
    assert request.header(b"x-a") == b"one two"


def test_header_helpers() -> None:
    request = parse_request(
        request_event(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
            b"Connection: ,TE\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n"
        )
    )
    assert request.header_tokens(b"connection") == {b"keep-alive", b"upgrade", b"te"}
    assert request.header(b"x-dup") == b"1"
    assert request.header(b"missing") is None


def test_head_size_counts_line_headers_and_blank_line() -> None:
    raw = b"GET /abc HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n"
    assert head_size(request_event(raw)) == len(raw)
    spaced = b"GET /abc HTTP/1.1\r\nHost:    h   \r\n\r\n"
    assert head_size(request_event(spaced)) < len(spaced)  # optional whitespace not counted


def test_reason_phrases_and_error_body() -> None:
    assert reason(200) == b"OK"
    assert reason(431) == b"Request Header Fields Too Large"
    assert reason(505) == b"HTTP Version Not Supported"
    assert reason(599) == b"Unknown"
    assert error_body(400, "bad") == b"400 Bad Request: bad\n"


@pytest.mark.parametrize("data", [b"x", b"data: hello\n\n", bytes(range(256)) * 70])
def test_chunk_is_what_h11_writes_for_data(data: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[], reason=b"OK"))
    assert chunk(data) == conn.send(h11.Data(data=data))


def test_empty_chunk_is_nothing_not_the_last_chunk() -> None:
    assert chunk(b"") == b""
