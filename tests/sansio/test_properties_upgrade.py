"""Properties of the WebSocket upgrade decision (rawstream.sansio.upgrade).

Two kinds: the decision on generated handshakes matches the rules of RFC 6455
section 4.2.1 taken one by one, and a handshake wsproto's client writes is accepted
and the ``101`` built from the decision is accepted by that client in turn.
"""

from __future__ import annotations

import base64
import binascii

import h11
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.events import Request as WSRequest
from wsproto.handshake import H11Handshake

from rawstream.sansio.http import Request, parse_request
from rawstream.sansio.upgrade import (
    UpgradeAccepted,
    UpgradeRejected,
    accept_key,
    check_upgrade,
    is_upgrade_request,
    offered_subprotocols,
)

header_text = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
keys = st.binary(min_size=16, max_size=16).map(base64.b64encode)


def cased(word: str) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(
            c.upper() if u else c for c, u in zip(word, upper, strict=True)
        ).encode()
    )


def token_list(required: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A comma-separated list that contains the token, with others and spaces around."""
    others = st.lists(st.sampled_from([b"keep-alive", b"h2c", b"close", b"foo"]), max_size=2)
    return st.tuples(others, required, others).map(
        lambda t: b", ".join([*t[0], b" " + t[1] + b" ", *t[2]])
    )


def field(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes | None]:
    """A header value: valid, absent (None) or arbitrary."""
    return st.one_of(valid, st.none(), header_text)


@st.composite
def handshakes(draw: st.DrawFn) -> Request:
    headers: list[tuple[bytes, bytes]] = [(b"host", b"x")]
    fields = {
        b"upgrade": field(token_list(cased("websocket"))),
        b"connection": field(token_list(cased("upgrade"))),
        b"sec-websocket-version": field(st.sampled_from([b"13", b" 13 ", b"13\t"])),
        b"sec-websocket-key": field(keys | keys.map(lambda k: b" " + k + b" ")),
        b"sec-websocket-protocol": field(st.just(b"rawstream, bearer.k")),
    }
    for name, strategy in fields.items():
        value = draw(strategy)
        if value is not None:
            headers.append((name, value))
    headers = draw(st.permutations(headers))
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT"]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    return Request(method, "/v1/ws", "/v1/ws", "", headers, version)


def expected_status(request: Request) -> int | None:
    """RFC 6455 section 4.2.1, one rule after the other (None: accepted)."""
    if request.method != "GET":
        return 405
    if request.http_version != "1.1":
        return 400
    if b"websocket" not in request.header_tokens(b"upgrade"):
        return 400
    if b"upgrade" not in request.header_tokens(b"connection"):
        return 400
    version = request.header(b"sec-websocket-version")
    if version is None or version.strip() != b"13":
        return 426
    key = request.header(b"sec-websocket-key")
    try:
        decoded = base64.b64decode((key or b"").strip(), validate=True)
    except (binascii.Error, ValueError):
        return 400
    return None if len(decoded) == 16 else 400


@given(handshakes())
def test_the_decision_follows_the_rules_in_order(request: Request) -> None:
    outcome = check_upgrade(request)
    status = expected_status(request)
    if status is None:
        assert isinstance(outcome, UpgradeAccepted)
        assert len(base64.b64decode(outcome.key, validate=True)) == 16
        assert outcome.offered == offered_subprotocols(request)
    else:
        assert isinstance(outcome, UpgradeRejected)
        assert outcome.status == status
        if status == 426:
            assert (b"sec-websocket-version", b"13") in outcome.headers
        if status == 405:
            assert (b"allow", b"GET") in outcome.headers


@given(handshakes())
def test_is_upgrade_request_is_about_the_upgrade_header_only(request: Request) -> None:
    assert is_upgrade_request(request) == (b"websocket" in request.header_tokens(b"upgrade"))


@given(
    st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,16}", fullmatch=True), max_size=5, unique=True),
    st.lists(st.tuples(st.sampled_from(["x-a", "origin", "user-agent"]), st.text("abc ")),
             max_size=3),
    st.data(),
)  # fmt: skip
def test_wsproto_client_handshakes_are_accepted_both_ways(
    subprotocols: list[str], extra: list[tuple[str, str]], data: st.DataObject
) -> None:
    client = H11Handshake(ConnectionType.CLIENT)
    raw = client.send(
        WSRequest(
            host="127.0.0.1",
            target="/v1/ws",
            subprotocols=subprotocols,
            extra_headers=[(n.encode(), v.strip().encode()) for n, v in extra],
        )
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    decision = check_upgrade(parse_request(event))
    assert isinstance(decision, UpgradeAccepted)
    assert decision.offered == tuple(subprotocols)
    chosen = data.draw(st.none() | st.sampled_from(subprotocols)) if subprotocols else None
    response = server.send(
        h11.InformationalResponse(status_code=101, headers=decision.response_headers(chosen))
    )
    client.receive_data(response)
    (accepted,) = list(client.events())
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == chosen


@given(keys, st.text(min_size=1, max_size=10))
def test_a_subprotocol_that_was_not_offered_is_never_selected(key: bytes, name: str) -> None:
    accepted = UpgradeAccepted(key=key, offered=("rawstream",))
    if name == "rawstream":
        assert (b"sec-websocket-protocol", b"rawstream") in accepted.response_headers(name)
        return
    try:
        accepted.response_headers(name)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{name!r} was selected without being offered")


@given(st.binary(max_size=64))
def test_accept_key_is_28_base64_characters(key: bytes) -> None:
    value = accept_key(key)
    assert len(value) == 28 and len(base64.b64decode(value, validate=True)) == 20


@given(st.lists(header_text, max_size=4))
def test_offered_subprotocols_keep_order_and_drop_empty_entries(values: list[bytes]) -> None:
    headers = [(b"sec-websocket-protocol", v) for v in values]
    offered = offered_subprotocols(Request("GET", "/", "/", "", headers, "1.1"))
    expected = [p.strip() for v in values for p in v.decode("latin-1").split(",") if p.strip()]
    assert list(offered) == expected
    assert all(p and p == p.strip() for p in offered)
