"""Redaction, without sockets: a key in any spot the authenticator reads is hidden.

Table-driven cases pin the exact output; the property tests place a key, in a
random encoding, among random other parameters and headers, check that the
authenticator accepts it (so the spot is a real one), and that nothing of it
survives redaction while everything else is kept.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawstream.sansio.auth import Authenticator
from rawstream.sansio.redact import (
    REDACTED,
    redact_headers,
    redact_query,
    redact_target,
    redact_text,
)

Headers = list[tuple[bytes, bytes]]

QUERIES: list[tuple[str, str, str]] = [
    ("nothing", "", ""),
    ("no parameters", "stream", "stream"),
    ("other parameters", "a=1&b=&c", "a=1&b=&c"),
    ("api_key", "api_key=sk-1", "api_key=REDACTED"),
    ("among others", "x=1&api_key=sk-1&y=2", "x=1&api_key=REDACTED&y=2"),
    ("repeated", "api_key=a&api_key=b", "api_key=REDACTED&api_key=REDACTED"),
    ("encoded underscore", "api%5Fkey=sk-1", "api%5Fkey=REDACTED"),
    ("encoded lower hex", "api%5fkey=sk-1", "api%5fkey=REDACTED"),
    ("encoded letter", "%61pi_key=sk-1", "%61pi_key=REDACTED"),
    ("all encoded", "%61%70%69%5F%6B%65%79=sk", "%61%70%69%5F%6B%65%79=REDACTED"),
    ("encoded value", "api_key=sk%2D1", "api_key=REDACTED"),
    ("upper case", "API_KEY=sk-1", "API_KEY=REDACTED"),
    ("plus after the name", "api_key+=sk-1", "api_key+=REDACTED"),
    ("plus is a space, not a key", "api+key=sk-1", "api+key=sk-1"),
    ("value with = in it", "api_key=a=b&z=1", "api_key=REDACTED&z=1"),
    ("value with # in it", "api_key=a#b&z=1", "api_key=REDACTED&z=1"),
    ("in a fragment", "x=1#api_key=sk-1", "x=1#api_key=REDACTED"),
    ("in a nested URL", "next=/a?api_key=sk-1", "next=/a?api_key=REDACTED"),
    ("access_token", "access_token=t-1", "access_token=REDACTED"),
    ("empty value kept", "api_key=&x=1", "api_key=&x=1"),
    ("no value", "api_key", "api_key"),
    ("semicolon is no separator", "x=1;api_key=sk", "x=1;api_key=sk"),
    ("a longer name", "api_keys=sk-1", "api_keys=sk-1"),
]


@pytest.mark.parametrize(
    ("query", "expected"), [c[1:] for c in QUERIES], ids=[c[0] for c in QUERIES]
)
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


def test_what_authenticates_in_a_query_is_what_is_redacted() -> None:
    """Each query case the authenticator accepts is refused once redacted."""
    auth = Authenticator(["sk-1", "sk"])
    for _, query, expected in QUERIES:
        if auth.authenticate([], query) is not None:
            assert REDACTED in expected
        assert auth.authenticate([], redact_query(query)) is None


TARGETS: list[tuple[str, str, str]] = [
    ("path only", "/v1/models", "/v1/models"),
    ("origin-form", "/v1/models?api_key=sk-1", "/v1/models?api_key=REDACTED"),
    ("empty query", "/v1/models?", "/v1/models?"),
    ("path kept", "/a%3Fapi_key=x?y=1", "/a%3Fapi_key=x?y=1"),
    ("# before ?", "/p#f?api_key=sk", "/p#f?api_key=REDACTED"),
    ("absolute-form", "http://h:1/p?api_key=sk-1", "http://h:1/p?api_key=REDACTED"),
    ("userinfo", "http://user:pw@h/p", "http://REDACTED@h/p"),
    ("@ in the query", "http://h?x=a@b", "http://h?x=a@b"),
    ("asterisk", "*", "*"),
]


@pytest.mark.parametrize(
    ("target", "expected"), [c[1:] for c in TARGETS], ids=[c[0] for c in TARGETS]
)
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


HEADERS: list[tuple[str, Headers, Headers]] = [
    ("bearer", [(b"authorization", b"Bearer sk-1")], [(b"authorization", b"Bearer REDACTED")]),
    (
        "scheme case kept",
        [(b"authorization", b"bEaReR sk-1")],
        [(b"authorization", b"bEaReR REDACTED")],
    ),
    ("basic", [(b"authorization", b"Basic dTpw")], [(b"authorization", b"Basic REDACTED")]),
    (
        "several spaces",
        [(b"authorization", b"Bearer   a b")],
        [(b"authorization", b"Bearer   REDACTED")],
    ),
    ("bare key", [(b"authorization", b"sk-1")], [(b"authorization", b"REDACTED")]),
    ("scheme alone", [(b"authorization", b"Bearer")], [(b"authorization", b"REDACTED")]),
    (
        "name in any case",
        [(b"Authorization", b"Bearer sk")],
        [(b"Authorization", b"Bearer REDACTED")],
    ),
    (
        "proxy",
        [(b"proxy-authorization", b"Basic x")],
        [(b"proxy-authorization", b"Basic REDACTED")],
    ),
    ("x-api-key", [(b"x-api-key", b"sk-1")], [(b"x-api-key", b"REDACTED")]),
    ("api-key", [(b"api-key", b"sk-1")], [(b"api-key", b"REDACTED")]),
    ("cookie", [(b"cookie", b"session=abc")], [(b"cookie", b"REDACTED")]),
    (
        "subprotocol",
        [(b"sec-websocket-protocol", b"rawstream, bearer.sk-1")],
        [(b"sec-websocket-protocol", b"rawstream, bearer.REDACTED")],
    ),
    (
        "subprotocol in any case, no spaces",
        [(b"sec-websocket-protocol", b"Bearer.sk-1,rawstream")],
        [(b"sec-websocket-protocol", b"Bearer.REDACTED,rawstream")],
    ),
    (
        "other subprotocols kept",
        [(b"sec-websocket-protocol", b"rawstream, chat.v2")],
        [(b"sec-websocket-protocol", b"rawstream, chat.v2")],
    ),
    (
        "other headers kept",
        [(b"host", b"h"), (b"user-agent", b"Bearer sk"), (b"accept", b"*/*")],
        [(b"host", b"h"), (b"user-agent", b"Bearer sk"), (b"accept", b"*/*")],
    ),
]


@pytest.mark.parametrize(
    ("headers", "expected"), [c[1:] for c in HEADERS], ids=[c[0] for c in HEADERS]
)
def test_redact_headers(headers: Headers, expected: Headers) -> None:
    assert redact_headers(headers) == expected


TEXTS: list[tuple[str, str, str]] = [
    (
        "h11 header line",
        "illegal header line: bytearray(b'Authorization : Bearer sk-1')",
        "illegal header line: bytearray(b'Authorization : Bearer REDACTED",
    ),
    (
        "h11 request line",
        "illegal request line: bytearray(b'GET /?x=1&api%5Fkey=sk-1 HTTP/1.1 ')",
        "illegal request line: bytearray(b'GET /?x=1&api%5Fkey=REDACTED HTTP/1.1 ')",
    ),
    ("x-api-key line", "b'X-Api-Key: sk-1\\r\\n'", "b'X-Api-Key: REDACTED"),
    (
        "subprotocol line",
        "b'sec-websocket-protocol: rawstream, bearer.sk-1'",
        "b'sec-websocket-protocol: rawstream, bearer.REDACTED",
    ),
    ("ordinary text", "connection lost (closed)", "connection lost (closed)"),
    ("other parameters", "GET /?a=1&b=2 HTTP/1.1", "GET /?a=1&b=2 HTTP/1.1"),
    ("a word, not a header", "the authorization flow", "the authorization flow"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in TEXTS], ids=[c[0] for c in TEXTS])
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


# ---------------------------------------------------------------- properties

#: Keys start with "SK" and use upper case, which other parts never contain
#: outside of percent escapes (whose hex digits exclude S and K).
keys = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~", min_size=8, max_size=24).map(
    lambda s: "SK" + s
)
#: Parameters that are no key: lower-case names and values.
other_params = st.lists(
    st.tuples(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789%+/:=", max_size=8),
    ).filter(lambda kv: kv[0].strip("_").lower() not in {"api_key", "access_token"}),
    max_size=4,
)


@st.composite
def encoded(draw: st.DrawFn, text: str) -> str:
    """``text`` with a random subset of its characters percent-encoded, in either hex case."""
    out = []
    for char in text:
        if draw(st.booleans()):
            escape = f"%{ord(char):02X}"
            out.append(escape.lower() if draw(st.booleans()) else escape)
        else:
            out.append(char)
    return "".join(out)


@st.composite
def query_with_key(draw: st.DrawFn) -> tuple[str, str, str]:
    """(query, key, the key as written in it), the key under an encoded ``api_key``."""
    key = draw(keys)
    written = draw(encoded(key))
    params = [f"{k}={v}" for k, v in draw(other_params)]
    spot = draw(st.integers(0, len(params)))
    params.insert(spot, f"{draw(encoded('api_key'))}={written}")
    return "&".join(params), key, written


@given(query_with_key())
def test_a_key_in_any_encoding_never_survives_a_query(case: tuple[str, str, str]) -> None:
    query, key, written = case
    auth = Authenticator([key])
    assert auth.authenticate([], query) is not None  # the spot is a real one
    redacted = redact_query(query)
    assert key not in redacted and written not in redacted
    assert key not in [value for _, value in parse_qsl(redacted)]
    assert auth.authenticate([], redacted) is None


@given(query_with_key(), st.sampled_from(["/v1/models", "http://127.0.0.1:8000/v1/ws"]))
def test_a_key_never_survives_a_target(case: tuple[str, str, str], path: str) -> None:
    query, key, written = case
    redacted = redact_target(f"{path}?{query}")
    assert redacted.startswith(f"{path}?")
    assert key not in redacted and written not in redacted


@given(other_params)
def test_a_query_without_a_key_is_kept_as_is(params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v}" for k, v in params)
    assert redact_query(query) == query
    assert redact_target(f"/p?{query}") == f"/p?{query}"


#: Header values that are no key: no upper case, no "bearer.".
other_values = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ,;=/", max_size=16).filter(
    lambda v: "bearer." not in v
)
other_headers = st.lists(
    st.tuples(st.sampled_from([b"host", b"accept", b"user-agent", b"x-trace"]), other_values),
    max_size=4,
)


@st.composite
def headers_with_key(draw: st.DrawFn) -> tuple[Headers, str]:
    """(headers, key): the key in ``Authorization``, ``X-Api-Key`` or a ``bearer.`` offer."""
    key = draw(keys)
    headers = [(name, value.encode()) for name, value in draw(other_headers)]
    where = draw(st.sampled_from(["authorization", "x-api-key", "subprotocol"]))
    if where == "authorization":
        scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]))
        spaces = " " * draw(st.integers(1, 3))
        spot = (b"authorization", f"{scheme}{spaces}{key}".encode())
    elif where == "x-api-key":
        spot = (draw(st.sampled_from([b"x-api-key", b"X-Api-Key"])), key.encode())
    else:
        offers = draw(st.lists(st.sampled_from(["rawstream", "chat"]), max_size=2))
        offers.insert(draw(st.integers(0, len(offers))), f"bearer.{key}")
        separator = draw(st.sampled_from([",", ", ", " , "]))
        spot = (b"sec-websocket-protocol", separator.join(offers).encode())
    headers.insert(draw(st.integers(0, len(headers))), spot)
    return headers, key


@given(headers_with_key())
def test_a_key_never_survives_the_headers(case: tuple[Headers, str]) -> None:
    headers, key = case
    auth = Authenticator([key])
    assert auth.authenticate(headers) is not None  # the spot is a real one
    redacted = redact_headers(headers)
    assert all(key.encode() not in value for _, value in redacted)
    assert [name for name, _ in redacted] == [name for name, _ in headers]
    assert auth.authenticate(redacted) is None
    assert [h for h in redacted if h[0] != _spot_name(headers, key)] == [
        h for h in headers if h[0] != _spot_name(headers, key)
    ]


def _spot_name(headers: Headers, key: str) -> bytes:
    return next(name for name, value in headers if key.encode() in value)


@given(headers_with_key(), query_with_key())
def test_a_key_never_survives_free_text(
    headers_case: tuple[Headers, str], query_case: tuple[str, str, str]
) -> None:
    """A request head as h11's error messages quote it: one line per header."""
    headers, key = headers_case
    query, query_key, written = query_case
    lines = [f"GET /v1/models?{query} HTTP/1.1"]
    lines += [f"{name.decode()}: {value.decode()}" for name, value in headers]
    redacted = redact_text(repr("\r\n".join(lines).encode()))
    assert key not in redacted
    assert query_key not in redacted and written not in redacted
