"""The WebSocket opening handshake decision (RFC 6455 section 4.2), without sockets."""

from __future__ import annotations

import pytest

from rawstream.sansio.http import Request
from rawstream.sansio.upgrade import (
    UpgradeAccepted,
    UpgradeRejected,
    accept_key,
    check_upgrade,
    is_upgrade_request,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
VERSION_13 = [(b"sec-websocket-version", b"13")]
GOOD = [
    (b"host", b"x"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def request(
    headers: list[tuple[bytes, bytes]], method: str = "GET", version: str = "1.1"
) -> Request:
    return Request(method, "/ws", "/ws", "", headers, version)


def without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in GOOD if k != name]


def replaced(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [*without(name), (name, value)]


def test_accept_key_of_the_rfc_example() -> None:
    """RFC 6455 section 1.3 gives this key and this answer."""
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_handshake_and_its_101_headers() -> None:
    decision = check_upgrade(request(GOOD))
    assert decision == UpgradeAccepted(key=KEY, offered=())
    assert decision.response_headers() == [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]


def test_tokens_are_case_insensitive_and_lists_allowed() -> None:
    headers = replaced(b"connection", b"keep-alive, UPGRADE")
    headers = [*headers[:1], (b"upgrade", b"WebSocket"), *headers[2:]]
    assert isinstance(check_upgrade(request(headers)), UpgradeAccepted)
    assert is_upgrade_request(request(headers))
    assert not is_upgrade_request(request(without(b"upgrade")))


def test_subprotocols_offered_in_order_and_selection() -> None:
    headers = [*GOOD, (b"sec-websocket-protocol", b"chat, v2"), (b"sec-websocket-protocol", b"v1")]
    decision = check_upgrade(request(headers))
    assert isinstance(decision, UpgradeAccepted)
    assert decision.offered == ("chat", "v2", "v1")
    assert (b"sec-websocket-protocol", b"v2") in decision.response_headers("v2")
    with pytest.raises(ValueError, match="not offered"):
        decision.response_headers("v3")


@pytest.mark.parametrize(
    ("req", "status", "headers"),
    [
        (request(GOOD, method="POST"), 405, [(b"allow", b"GET")]),
        (request(GOOD, version="1.0"), 400, []),
        (request(without(b"connection")), 400, []),
        (request(replaced(b"connection", b"keep-alive")), 400, []),
        (request(without(b"sec-websocket-key")), 400, []),
        (request(replaced(b"sec-websocket-key", b"YWJj")), 400, []),  # 3 bytes
        (request(replaced(b"sec-websocket-key", b"not base64!!")), 400, []),
        (request(replaced(b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAAAAAAAA==")), 400, []),  # 19
        (request(replaced(b"sec-websocket-version", b"8")), 426, VERSION_13),
        (request(without(b"sec-websocket-version")), 426, VERSION_13),
    ],
    ids=[
        "post", "http-1.0", "no-connection", "connection-without-upgrade", "no-key",
        "key-3-bytes", "key-not-base64", "key-19-bytes", "version-8", "no-version",
    ],
)  # fmt: skip
def test_rejections(req: Request, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    decision = check_upgrade(req)
    assert isinstance(decision, UpgradeRejected)
    assert (decision.status, decision.headers) == (status, headers)
