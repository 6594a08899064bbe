"""The authentication decision, without sockets."""

from __future__ import annotations

import json

import pytest

from rawstream.config import Config
from rawstream.sansio.auth import (
    ANONYMOUS,
    CHALLENGE,
    Authenticator,
    Identity,
    unauthorized_body,
)

KEYS = ["sk-first", "sk-second"]
Headers = list[tuple[bytes, bytes]]

CASES: list[tuple[str, Headers, str, str | None]] = [
    ("no credentials", [], "", None),
    ("bearer first", [(b"authorization", b"Bearer sk-first")], "", "key-0"),
    ("bearer second", [(b"authorization", b"Bearer sk-second")], "", "key-1"),
    ("scheme case", [(b"authorization", b"bEaReR sk-second")], "", "key-1"),
    ("extra spaces", [(b"authorization", b"  Bearer   sk-first  ")], "", "key-0"),
    ("wrong key", [(b"authorization", b"Bearer sk-third")], "", None),
    ("prefix of a key", [(b"authorization", b"Bearer sk-firs")], "", None),
    ("key plus more", [(b"authorization", b"Bearer sk-first2")], "", None),
    ("basic scheme", [(b"authorization", b"Basic sk-first")], "", None),
    ("bare key", [(b"authorization", b"sk-first")], "", None),
    ("empty bearer", [(b"authorization", b"Bearer ")], "", None),
    ("mixed-case header name", [(b"Authorization", b"Bearer sk-first")], "", "key-0"),
    (
        "subprotocol",
        [(b"sec-websocket-protocol", b"rawstream, bearer.sk-second")],
        "",
        "key-1",
    ),
    (
        "subprotocol in a second header",
        [
            (b"sec-websocket-protocol", b"rawstream"),
            (b"sec-websocket-protocol", b"bearer.sk-first"),
        ],
        "",
        "key-0",
    ),
    ("subprotocol wrong key", [(b"sec-websocket-protocol", b"bearer.nope")], "", None),
    ("subprotocol without prefix", [(b"sec-websocket-protocol", b"sk-first")], "", None),
    ("empty subprotocol key", [(b"sec-websocket-protocol", b"bearer.")], "", None),
    ("query", [], "api_key=sk-first", "key-0"),
    ("query among others", [], "x=1&api_key=sk-second&y=2", "key-1"),
    ("query percent-encoded", [], "api_key=sk%2Dfirst", "key-0"),
    ("query wrong key", [], "api_key=sk-none", None),
    ("query other name", [], "key=sk-first", None),
    ("query empty", [], "api_key=", None),
    (
        "bad header, good query",
        [(b"authorization", b"Bearer wrong")],
        "api_key=sk-second",
        "key-1",
    ),
    (
        "header wins over query",
        [(b"authorization", b"Bearer sk-first")],
        "api_key=sk-second",
        "key-0",
    ),
    ("non-ASCII junk", [(b"authorization", b"Bearer \xff\xfe")], "api_key=%FF", None),
]


@pytest.mark.parametrize(
    ("headers", "query", "tenant"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_authenticate(headers: Headers, query: str, tenant: str | None) -> None:
    identity = Authenticator(KEYS).authenticate(headers, query)
    if tenant is None:
        assert identity is None
    else:
        assert identity == Identity(tenant)
        assert not identity.anonymous


def test_no_keys_means_anonymous() -> None:
    auth = Authenticator([])
    assert not auth.required
    assert auth.authenticate([], "") is ANONYMOUS
    assert auth.authenticate([(b"authorization", b"Bearer anything")], "") is ANONYMOUS
    assert ANONYMOUS.anonymous and str(ANONYMOUS) == "anonymous"


def test_from_config() -> None:
    assert not Authenticator.from_config(Config()).required
    auth = Authenticator.from_config(Config(api_key=("k1",)))
    assert auth.required
    assert auth.authenticate([(b"authorization", b"Bearer k1")]) == Identity("key-0")


def test_identity_never_holds_the_key() -> None:
    identity = Authenticator(["sk-secret"]).authenticate(
        [(b"authorization", b"Bearer sk-secret")], ""
    )
    assert identity is not None
    assert "sk-secret" not in repr(identity) and "sk-secret" not in str(identity)


def test_unicode_key() -> None:
    auth = Authenticator(["cl\u00e9"])
    assert auth.authenticate([], "api_key=cl%C3%A9") == Identity("key-0")
    assert auth.authenticate([(b"authorization", "Bearer cl\u00e9".encode())]) == Identity("key-0")


def test_duplicate_keys_map_to_the_first() -> None:
    auth = Authenticator(["k", "k"])
    assert auth.authenticate([(b"authorization", b"Bearer k")]) == Identity("key-0")


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Authenticator(["ok", ""])


def test_unauthorized_body_and_challenge() -> None:
    assert json.loads(unauthorized_body()) == {
        "error": {
            "message": "Missing or invalid API key. Send 'Authorization: Bearer <key>'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert CHALLENGE[0] == b"www-authenticate" and CHALLENGE[1].startswith(b"Bearer ")
