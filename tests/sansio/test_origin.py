"""The browser origin policy, without sockets: Host, Origin, preflight, CORS headers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rawstream.config import Config
from rawstream.sansio.origin import (
    ALLOW_METHODS,
    MAX_AGE,
    Allowed,
    Decision,
    Origin,
    OriginPolicy,
    Preflight,
    Refused,
    parse_host,
    parse_origin,
)

PORT = 8000
Headers = list[tuple[bytes, bytes]]


def policy(
    allow_origin: tuple[str, ...] = (), allow_host: tuple[str, ...] = (), bind: str = "127.0.0.1"
) -> OriginPolicy:
    return OriginPolicy.build(allow_origin, allow_host, bind, PORT)


def head(host: str | None = "127.0.0.1:8000", origin: str | None = None, **more: str) -> Headers:
    headers: Headers = []
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    for name, value in more.items():
        headers.append((name.replace("_", "-").encode(), value.encode()))
    return headers


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://localhost:8000", Origin("http", "localhost", 8000)),
        ("HTTP://LocalHost:8000", Origin("http", "localhost", 8000)),
        ("http://localhost", Origin("http", "localhost", 80)),
        ("http://localhost:80", Origin("http", "localhost", 80)),
        ("https://app.example", Origin("https", "app.example", 443)),
        ("https://app.example:443", Origin("https", "app.example", 443)),
        ("http://[::1]:8000", Origin("http", "::1", 8000)),
        ("http://[0:0:0:0:0:0:0:1]:8000", Origin("http", "::1", 8000)),
        ("chrome-extension://abcdef", Origin("chrome-extension", "abcdef", None)),
        ("null", None),
        ("", None),
        ("localhost:8000", None),
        ("http://localhost:8000/", None),
        ("http://localhost:8000/path", None),
        ("http://user@localhost:8000", None),
        ("http://localhost:99999", None),
        ("http://a.example http://b.example", None),
        ("http://", None),
    ],
)
def test_parse_origin(text: str, expected: Origin | None) -> None:
    assert parse_origin(text) == expected


@pytest.mark.parametrize(
    ("origin", "serialised"),
    [
        (Origin("http", "localhost", 80), "http://localhost"),
        (Origin("http", "localhost", 8000), "http://localhost:8000"),
        (Origin("https", "app.example", 443), "https://app.example"),
        (Origin("http", "::1", 8000), "http://[::1]:8000"),
        (Origin("chrome-extension", "abc", None), "chrome-extension://abc"),
    ],
)
def test_origin_serialisation_omits_the_default_port(origin: Origin, serialised: str) -> None:
    """RFC 6454 section 6.2: the port only when it is not the scheme's default."""
    assert str(origin) == serialised
    assert parse_origin(serialised) == origin


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("LOCALHOST", ("localhost", None)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", None)),
        ("example.com:", ("example.com", None)),
        ("", ("", None)),
        ("a b", None),
        ("host/path", None),
        ("::1", None),
        ("example.com:99999", None),
        ("example.com:80x", None),
    ],
)
def test_parse_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_host(value) == expected


# ---------------------------------------------------------------------- decisions
#: The policy of a server bound to 127.0.0.1:8000 with no allow lists.
DEFAULT = policy()


@dataclass(frozen=True)
class Case:
    name: str
    headers: Headers
    expected: int | None  # None: allowed; else the refusal's status
    policy: OriginPolicy = DEFAULT
    method: str = "POST"
    target: str = "/v1/generations"


CASES = [
    # --- no Origin: curl, the SDKs, navigations --------------------------------
    Case("no origin (curl)", head(), None),
    Case("no origin, localhost", head("localhost:8000"), None),
    Case("no origin, ::1", head("[::1]:8000"), None),
    Case("no Host at all (HTTP/1.0)", head(None), None),
    Case("empty Host", head(""), 400),
    Case("Host with a port only", head(":8000"), 400),
    # --- the server's own origins ----------------------------------------------
    Case("own origin 127.0.0.1", head(origin="http://127.0.0.1:8000"), None),
    Case("own origin localhost", head(origin="http://localhost:8000"), None),
    Case("own origin [::1]", head(origin="http://[::1]:8000"), None),
    Case("own origin, upper case", head(origin="HTTP://LOCALHOST:8000"), None),
    Case("same as Host", head("mybox.lan:8000", "http://mybox.lan:8000"), None,
         policy(allow_host=("mybox.lan",))),
    Case("https page behind a proxy, Host without port",
         head("chat.example", "https://chat.example"), None, policy(allow_host=("chat.example",))),
    Case("Host without port is not any port", head("chat.example", "http://chat.example:8000"),
         403, policy(allow_host=("chat.example",))),
    # --- cross-site --------------------------------------------------------------
    Case("cross-site origin", head(origin="http://evil.example"), 403),
    Case("same host, another port", head(origin="http://127.0.0.1:3000"), 403),
    Case("same Host over https (a TLS proxy on that port)", head(origin="https://127.0.0.1:8000"),
         None),
    Case("own origin over https is not listed", head("localhost:8000", "https://127.0.0.1:8000"),
         403),
    Case("localhost on another port", head(origin="http://localhost:3000"), 403),
    Case("null origin", head(origin="null"), 403),
    Case("garbage origin", head(origin="not an origin"), 403),
    Case("two origins in one header", head(origin="http://127.0.0.1:8000 http://evil.example"),
         403),
    Case("two Origin headers", [*head(origin="http://127.0.0.1:8000"),
                                (b"origin", b"http://127.0.0.1:8000")], 403),
    Case("non-ASCII origin", [*head(), (b"origin", "http://\u00e9.example".encode())], 403),
    Case("websocket from another site", head(origin="http://evil.example"), 403, method="GET",
         target="/v1/ws"),
    Case("GET of the page from another site", head(origin="http://evil.example"), 403,
         method="GET", target="/"),
    # --- --allow-origin ----------------------------------------------------------
    Case("listed origin", head(origin="http://localhost:3000"), None,
         policy(("http://localhost:3000",))),
    Case("listed origin, default port spelled out", head(origin="https://app.example"), None,
         policy(("https://app.example:443",))),
    Case("listed with a trailing slash", head(origin="https://app.example"), None,
         policy(("https://app.example/",))),
    Case("listed origin, another port", head(origin="http://localhost:3001"), 403,
         policy(("http://localhost:3000",))),
    Case("own origins stay allowed with a list", head(origin="http://127.0.0.1:8000"), None,
         policy(("http://localhost:3000",))),
    Case("star allows any origin", head(origin="http://evil.example"), None, policy(("*",))),
    Case("star allows null", head(origin="null"), None, policy(("*",))),
    # --- DNS rebinding: Host ------------------------------------------------------
    Case("rebinding Host", head("evil.example:8000", "http://evil.example:8000"), 421),
    Case("rebinding Host, no Origin (a GET)", head("evil.example:8000"), 421, method="GET",
         target="/v1/models"),
    Case("rebinding Host on /health", head("evil.example:8000"), 421, method="GET",
         target="/health"),
    Case("rebinding Host with star origins", head("evil.example:8000", "http://evil.example:8000"),
         421, policy(("*",))),
    Case("Host case-insensitive", head("LocalHost:8000"), None),
    Case("Host port ignored", head("localhost:1234"), None),
    Case("another IP literal on a loopback bind", head("10.0.0.5:8000"), 421),
    Case("two Host headers", [*head(), (b"host", b"evil.example")], 400),
    Case("invalid Host", head("a b"), 400),
    Case("absolute-form target names the host", head(), 421, target="http://evil.example/v1/models"),
    Case("absolute-form target, allowed host", head("evil.example"), None,
         target="http://127.0.0.1:8000/v1/models"),
    # --- --allow-host --------------------------------------------------------------
    Case("listed host", head("mybox.lan:8000"), None, policy(allow_host=("mybox.lan",))),
    Case("listed host, case", head("MyBox.LAN:8000"), None, policy(allow_host=("mybox.LAN",))),
    Case("listed host with a port", head("mybox.lan:9"), None,
         policy(allow_host=("mybox.lan:8000",))),
    Case("listed bare IPv6", head("[fe80::1]:8000"), None, policy(allow_host=("fe80::1",))),
    Case("listed hosts keep loopback", head("localhost:8000"), None,
         policy(allow_host=("mybox.lan",))),
    Case("star hosts", head("evil.example:8000"), None, policy(allow_host=("*",))),
    Case("star hosts, rebinding page is same-origin",
         head("evil.example:8000", "http://evil.example:8000"), None, policy(allow_host=("*",))),
    # --- bound to a name or a wildcard ---------------------------------------------
    Case("bound name is a Host", head("mybox.lan:8000"), None, policy(bind="mybox.lan")),
    Case("bound name is an origin", head(origin="http://mybox.lan:8000"), None,
         policy(bind="mybox.lan")),
    Case("wildcard: IP-literal Host", head("192.168.1.5:8000"), None, policy(bind="0.0.0.0")),
    Case("wildcard: IPv6-literal Host", head("[fe80::1]:8000"), None, policy(bind="::")),
    Case("wildcard: page opened by IP", head("192.168.1.5:8000", "http://192.168.1.5:8000"),
         None, policy(bind="0.0.0.0")),
    Case("wildcard: another site's IP page", head("192.168.1.5:8000", "http://203.0.113.7:8000"),
         403, policy(bind="0.0.0.0")),
    Case("wildcard: names still refused", head("evil.example:8000"), 421, policy(bind="0.0.0.0")),
    Case("wildcard: 0.0.0.0 is not an origin", head(origin="http://0.0.0.0:8000"), 403,
         policy(bind="0.0.0.0")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decision(case: Case) -> None:
    decision = case.policy.check(case.method, case.headers, case.target)
    if case.expected is None:
        assert isinstance(decision, Allowed), decision
    else:
        assert isinstance(decision, Refused), decision
        assert decision.status == case.expected
        assert decision.message


def cors(decision: Decision) -> dict[bytes, bytes]:
    assert not isinstance(decision, Refused), decision
    headers = dict(decision.headers)
    assert len(headers) == len(decision.headers), "a header given twice"
    return headers


def test_allowed_origin_gets_cors_headers_with_its_origin_echoed() -> None:
    headers = cors(policy().check("POST", head(origin="http://localhost:8000")))
    assert headers[b"access-control-allow-origin"] == b"http://localhost:8000"
    assert headers[b"vary"] == b"origin"
    exposed = headers[b"access-control-expose-headers"].split(b", ")
    assert {b"retry-after", b"location", b"www-authenticate"} <= set(exposed)
    assert b"access-control-allow-credentials" not in headers


def test_star_echoes_the_origin_not_a_star() -> None:
    headers = cors(policy(("*",)).check("GET", head(origin="http://evil.example")))
    assert headers[b"access-control-allow-origin"] == b"http://evil.example"


@pytest.mark.parametrize(("method", "vary"), [("GET", True), ("HEAD", True), ("POST", False)])
def test_no_origin_gets_no_cors_headers_but_get_varies(method: str, vary: bool) -> None:
    """Fetch, "CORS protocol and HTTP caches": a GET answer varies on Origin even without one."""
    headers = cors(policy().check(method, head()))
    assert b"access-control-allow-origin" not in headers
    assert (headers.get(b"vary") == b"origin") is vary


def preflight(
    p: OriginPolicy, origin: str, requested_headers: str | None = None, **more: str
) -> Decision:
    extra = {"access_control_request_method": "POST", **more}
    if requested_headers is not None:
        extra["access_control_request_headers"] = requested_headers
    return p.check("OPTIONS", head(origin=origin, **extra), "/v1/chat/completions")


def test_preflight_answer() -> None:
    decision = preflight(policy(("http://localhost:3000",)), "http://localhost:3000")
    assert isinstance(decision, Preflight)
    assert decision.status == 204
    headers = cors(decision)
    assert headers[b"access-control-allow-origin"] == b"http://localhost:3000"
    assert headers[b"access-control-allow-methods"] == ALLOW_METHODS
    assert set(headers[b"access-control-allow-headers"].split(b", ")) == {
        b"authorization",
        b"content-type",
        b"last-event-id",
    }
    assert headers[b"access-control-max-age"] == str(MAX_AGE).encode()
    assert b"origin" in headers[b"vary"].split(b", ")
    assert b"access-control-allow-private-network" not in headers


def test_preflight_allows_the_requested_headers_that_are_tokens() -> None:
    decision = preflight(
        policy(("*",)), "http://app.example", "Content-Type, x-stainless-os, bad header, ,x-b"
    )
    names = cors(decision)[b"access-control-allow-headers"].split(b", ")
    assert names == [b"authorization", b"content-type", b"last-event-id", b"x-stainless-os", b"x-b"]


def test_preflight_answers_private_network_access() -> None:
    decision = preflight(
        policy(("https://app.example",)),
        "https://app.example",
        access_control_request_private_network="true",
    )
    assert cors(decision)[b"access-control-allow-private-network"] == b"true"


def test_preflight_from_a_disallowed_origin_is_refused() -> None:
    decision = preflight(policy(), "http://evil.example")
    assert isinstance(decision, Refused) and decision.status == 403


def test_options_without_request_method_is_not_a_preflight() -> None:
    decision = policy().check("OPTIONS", head(origin="http://localhost:8000"))
    assert isinstance(decision, Allowed)


def test_refusals_name_the_flag_that_would_allow_them() -> None:
    origin = policy().check("POST", head(origin="http://localhost:3000"))
    assert isinstance(origin, Refused) and origin.code == "origin_not_allowed"
    assert "--allow-origin http://localhost:3000" in origin.message
    host = policy().check("GET", head("mybox.lan:8000"))
    assert isinstance(host, Refused) and host.code == "host_not_allowed"
    assert "--allow-host mybox.lan" in host.message


@pytest.mark.parametrize(
    ("allow_origin", "allow_host", "flag"),
    [
        (("localhost:3000",), (), "--allow-origin"),
        (("http://localhost:3000/app",), (), "--allow-origin"),
        (("null",), (), "--allow-origin"),
        ((), ("a b",), "--allow-host"),
        ((), ("",), "--allow-host"),
    ],
)
def test_bad_allow_list_entries_are_refused_naming_the_flag(
    allow_origin: tuple[str, ...], allow_host: tuple[str, ...], flag: str
) -> None:
    with pytest.raises(ValueError, match=flag):
        policy(allow_origin, allow_host)


def test_from_config() -> None:
    config = Config(host="127.0.0.1", port=0, allow_origin=("http://localhost:3000",))
    p = OriginPolicy.from_config(config, 4321)
    assert Origin("http", "localhost", 3000) in p.origins
    assert Origin("http", "127.0.0.1", 4321) in p.origins
    assert Origin("http", "localhost", 4321) in p.origins
    assert {"127.0.0.1", "localhost", "::1"} <= p.hosts


def test_verdict_memos_stay_bounded() -> None:
    """Every request may name another Host or Origin; the memos never grow past a bound."""
    p = policy()
    for i in range(2000):
        p.check("POST", head(f"h{i}.example:8000", f"http://o{i}.example"))
        p.check("POST", head(origin=f"http://o{i}.example"))
    assert 0 < len(p._host_memo) <= 256
    assert 0 < len(p._origin_memo) <= 256
    assert isinstance(p.check("GET", head("h1.example")), Refused)
    assert isinstance(p.check("GET", head()), Allowed)
