"""Browser origin policy over real loopback sockets: Origin, Host (DNS rebinding), CORS.

What a hostile web page can make the user's browser send is reproduced here with
real clients: httpx with the ``Origin`` and ``Host`` a browser would put on the
request, the ``websockets`` client with ``origin=``, hand-written requests where a
client library will not send what a browser would, and curl for the clients that
send no ``Origin`` at all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import httpx_sse
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from rawstream.app.application import App, StartupError
from rawstream.config import Config
from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp
from tests.support import open_raw, read_response_head, read_until_close

EVIL = "http://evil.example"
FRONT_END = "http://localhost:3000"
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def client(running: RunningApp, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, headers=headers, timeout=TIMEOUT)


def error_code(response: httpx.Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]["code"]


def no_websocket_opened(running: RunningApp) -> bool:
    return all(conn.websocket is None for conn in running.app.server.connections)


# ---------------------------------------------------------------------- WebSocket
async def test_websocket_from_another_site_is_refused_before_the_upgrade(
    fake_app: FakeAppFactory,
) -> None:
    """RFC 6455 section 10.2: an unacceptable Origin gets 403, never the 101."""
    async with fake_app() as running:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(running.ws_url, origin=Origin(EVIL), open_timeout=TIMEOUT):
                pass
        response = refused.value.response
        assert response.status_code == 403
        assert json.loads(response.body or b"")["error"]["code"] == "origin_not_allowed"
        assert no_websocket_opened(running)
        assert running.engine.requests == []


async def test_websocket_from_another_site_is_refused_even_with_a_valid_key(
    fake_app: FakeAppFactory,
) -> None:
    """The origin check comes before authentication: 403, not 101 or 401."""
    async with fake_app(api_key=("sk-test",)) as running:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                running.ws_url,
                origin=Origin(EVIL),
                subprotocols=["rawstream", "bearer.sk-test"],  # type: ignore[list-item]
                open_timeout=TIMEOUT,
            ):
                pass
        assert refused.value.response.status_code == 403


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}"])
async def test_websocket_from_the_servers_own_page_upgrades(
    fake_app: FakeAppFactory, origin: str
) -> None:
    async with fake_app() as running:
        own = Origin(origin.format(port=running.port))
        async with connect(
            running.ws_url,
            origin=own,
            subprotocols=["rawstream"],  # type: ignore[list-item]
            open_timeout=TIMEOUT,
        ) as ws:
            await ws.send(json.dumps({"type": "generate", "id": 1, **CHAT}))
            message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert message["id"] == 1


async def test_websocket_from_a_listed_origin_upgrades(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(allow_origin=(FRONT_END,)) as running,
        connect(running.ws_url, origin=Origin(FRONT_END), open_timeout=TIMEOUT) as ws,
    ):
        assert ws.response is not None and ws.response.status_code == 101


async def test_websocket_without_origin_upgrades(fake_app: FakeAppFactory) -> None:
    """A program (not a browser) sends no Origin and is not affected."""
    async with fake_app() as running, connect(running.ws_url, open_timeout=TIMEOUT) as ws:
        assert ws.response is not None and ws.response.status_code == 101


# ---------------------------------------------------------------------- cross-site requests
@pytest.mark.parametrize("path", ["/v1/generations", "/v1/chat/completions", "/v1/completions"])
async def test_cross_site_text_plain_post_is_refused_and_starts_nothing(
    fake_app: FakeAppFactory, path: str
) -> None:
    """The "simple" request a page may send anywhere without a preflight."""
    body = {"prompt": "hi", **CHAT} if path == "/v1/completions" else CHAT
    async with fake_app() as running, client(running, origin=EVIL) as http:
        response = await http.post(
            path, content=json.dumps(body), headers={"content-type": "text/plain;charset=UTF-8"}
        )
        assert response.status_code == 403
        assert error_code(response) == "origin_not_allowed"
        assert "access-control-allow-origin" not in response.headers
        assert running.engine.requests == []


async def test_refused_before_the_body_is_read(fake_app: FakeAppFactory) -> None:
    """The 403 comes while the body is still unsent, and the connection then closes."""
    async with fake_app() as running:
        reader, writer = await open_raw(running.port)
        writer.write(
            f"POST /v1/generations HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n"
            f"Origin: {EVIL}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        head = await read_response_head(reader, TIMEOUT)
        assert head.startswith(b"HTTP/1.1 403 ")
        assert b"connection: close" in head.lower()
        writer.close()
        assert running.engine.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/health"), ("GET", "/v1/models"), ("DELETE", "/v1/generations/x")],
)
async def test_every_route_refuses_another_sites_origin(
    fake_app: FakeAppFactory, method: str, path: str
) -> None:
    async with fake_app() as running, client(running, origin="null") as http:
        response = await http.request(method, path)
        assert response.status_code == 403, response.text


async def test_cross_site_origin_is_refused_before_authentication(
    fake_app: FakeAppFactory,
) -> None:
    async with fake_app(api_key=("sk-test",)) as running:
        async with client(running, origin=EVIL, authorization="Bearer sk-test") as http:
            response = await http.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 403
        assert running.engine.requests == []


# ---------------------------------------------------------------------- DNS rebinding
@pytest.mark.parametrize("path", ["/", "/health", "/v1/models", "/metrics"])
async def test_dns_rebinding_host_is_refused(fake_app: FakeAppFactory, path: str) -> None:
    """A page at evil.example whose name now points at 127.0.0.1 is same-origin with
    itself, so its Origin check passes; its Host gives it away."""
    async with fake_app() as running:
        host = f"evil.example:{running.port}"
        async with client(running, host=host, origin=f"http://{host}") as http:
            response = await http.get(path)
            assert response.status_code == 421, response.text
            assert error_code(response) == "host_not_allowed"
        async with client(running, host=host) as http:  # a GET need not carry Origin
            assert (await http.get(path)).status_code == 421


async def test_dns_rebinding_post_starts_nothing(fake_app: FakeAppFactory) -> None:
    async with fake_app(allow_origin=("*",)) as running:
        host = f"evil.example:{running.port}"
        async with client(running, host=host, origin=f"http://{host}") as http:
            response = await http.post("/v1/generations", json=CHAT)
            assert response.status_code == 421
        assert running.engine.requests == []


async def test_dns_rebinding_websocket_is_refused_before_the_upgrade(
    fake_app: FakeAppFactory,
) -> None:
    async with fake_app() as running:
        reader, writer = await open_raw(running.port)
        host = f"evil.example:{running.port}"
        writer.write(
            f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        head = await read_response_head(reader, TIMEOUT)
        assert head.startswith(b"HTTP/1.1 421 ")
        writer.close()
        assert no_websocket_opened(running)


async def test_allow_host_admits_a_name(fake_app: FakeAppFactory) -> None:
    async with fake_app(allow_host=("mybox.lan",)) as running:
        host = f"MyBox.lan:{running.port}"
        async with client(running, host=host, origin=f"http://mybox.lan:{running.port}") as http:
            response = await http.get("/v1/models")
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == (
                f"http://mybox.lan:{running.port}"
            )


async def test_loopback_names_are_accepted(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        for host in ("127.0.0.1", "localhost", "LOCALHOST", "[::1]"):
            async with client(running, host=f"{host}:{running.port}") as http:
                assert (await http.get("/health")).status_code == 200, host


async def test_http10_request_without_host_is_served(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        reader, writer = await open_raw(running.port)
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        answer = await read_until_close(reader, TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 200 ")
        writer.close()


# ---------------------------------------------------------------------- no Origin: curl
async def curl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


async def test_curl_without_origin_works(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        status, body = await curl(f"{running.url}/v1/generations", "-d", json.dumps(CHAT))
        assert status == 201, body
        status, body = await curl(f"http://localhost:{running.port}/v1/models")
        assert status == 200, body
        assert len(running.engine.requests) == 1


# ---------------------------------------------------------------------- CORS
async def test_preflight_from_an_allowed_origin(fake_app: FakeAppFactory) -> None:
    async with fake_app(allow_origin=(FRONT_END,)) as running, client(running) as http:
        response = await http.options(
            "/v1/chat/completions",
            headers={
                "origin": FRONT_END,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-stainless-os",
            },
        )
        assert response.status_code == 204
        h = response.headers
        assert h["access-control-allow-origin"] == FRONT_END
        assert set(h["access-control-allow-methods"].split(", ")) >= {"GET", "POST", "DELETE"}
        allowed = set(h["access-control-allow-headers"].split(", "))
        assert {"authorization", "content-type", "last-event-id", "x-stainless-os"} <= allowed
        assert int(h["access-control-max-age"]) > 0
        assert "origin" in h["vary"].split(", ")
        assert response.content == b""
        # RFC 9110 section 8.6: no Content-Length (nor a type) on a 204.
        assert "content-length" not in h and "content-type" not in h
        assert running.engine.requests == []


async def test_preflight_needs_no_key(fake_app: FakeAppFactory) -> None:
    """A browser never sends credentials on a preflight, so it cannot be asked for one."""
    async with (
        fake_app(api_key=("sk-test",), allow_origin=(FRONT_END,)) as running,
        client(running) as http,
    ):
        response = await http.options(
            "/v1/models",
            headers={"origin": FRONT_END, "access-control-request-method": "GET"},
        )
        assert response.status_code == 204


async def test_preflight_from_another_site_is_refused(fake_app: FakeAppFactory) -> None:
    async with fake_app(allow_origin=(FRONT_END,)) as running, client(running) as http:
        response = await http.options(
            "/v1/chat/completions",
            headers={"origin": EVIL, "access-control-request-method": "POST"},
        )
        assert response.status_code == 403
        assert "access-control-allow-origin" not in response.headers


def assert_cors(response: httpx.Response, origin: str = FRONT_END) -> None:
    assert response.headers["access-control-allow-origin"] == origin
    assert "origin" in response.headers["vary"].lower()
    assert "access-control-allow-credentials" not in response.headers


async def test_cross_origin_responses_carry_cors_headers(fake_app: FakeAppFactory) -> None:
    """JSON, the 201 with its Location, the SSE stream, and errors."""
    async with (
        fake_app(allow_origin=(FRONT_END,)) as running,
        client(running, origin=FRONT_END) as http,
    ):
        completion = await http.post("/v1/chat/completions", json=CHAT)
        assert completion.status_code == 200
        assert_cors(completion)
        created = await http.post("/v1/generations", json=CHAT)
        assert created.status_code == 201
        assert_cors(created)
        exposed = created.headers["access-control-expose-headers"].split(", ")
        assert "location" in exposed and "retry-after" in exposed
        async with httpx_sse.aconnect_sse(http, "GET", created.headers["location"]) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert_cors(source.response)
            events = [sse.event async for sse in source.aiter_sse()]
            assert events[-1] == "done"
        missing = await http.get("/v1/nothing")
        assert missing.status_code == 404
        assert_cors(missing)
        invalid = await http.post("/v1/chat/completions", json={"messages": "no"})
        assert invalid.status_code == 400
        assert_cors(invalid)


async def test_a_wrong_key_is_readable_by_an_allowed_page(fake_app: FakeAppFactory) -> None:
    """The page can tell "wrong key" from "server unreachable"."""
    async with (
        fake_app(api_key=("sk-test",), allow_origin=(FRONT_END,)) as running,
        client(running, origin=FRONT_END, authorization="Bearer nope") as http,
    ):
        response = await http.get("/v1/models")
        assert response.status_code == 401
        assert_cors(response)
        assert "www-authenticate" in response.headers["access-control-expose-headers"]


async def test_responses_to_get_without_origin_vary_on_origin(fake_app: FakeAppFactory) -> None:
    """Fetch, "CORS protocol and HTTP caches": no cached navigation answer for a CORS request."""
    async with fake_app() as running, client(running) as http:
        response = await http.get("/v1/models")
        assert response.headers["vary"] == "origin"
        assert "access-control-allow-origin" not in response.headers


async def test_star_allows_every_origin_but_not_every_host(fake_app: FakeAppFactory) -> None:
    async with fake_app(allow_origin=("*",)) as running:
        async with client(running, origin=EVIL) as http:
            response = await http.post("/v1/generations", json=CHAT)
            assert response.status_code == 201
            assert_cors(response, EVIL)
        async with connect(running.ws_url, origin=Origin("null"), open_timeout=TIMEOUT) as ws:
            assert ws.response is not None and ws.response.status_code == 101
        async with client(running, origin=EVIL, host="evil.example") as http:
            assert (await http.get("/v1/models")).status_code == 421


async def test_a_bad_allow_origin_stops_start_up_before_listening() -> None:
    app = App(Config(port=0, engine="fake", access_log=False, allow_origin=("localhost:3000",)))
    with pytest.raises(StartupError, match="--allow-origin"):
        await app.start()
    assert app.server._server is None
    await app.close()


async def test_an_error_the_connection_answers_carries_cors_headers(
    fake_app: FakeAppFactory,
) -> None:
    """A 413 sent by the connection itself (the body grew past the limit while it was
    read) reaches a page of an allowed origin as a readable response. The client
    waits for ``100 Continue``, which the handler sends after the policy check."""
    async with fake_app(allow_origin=(FRONT_END,), max_body_bytes=1024) as running:
        reader, writer = await open_raw(running.port)
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Origin: " + FRONT_END.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            interim = await read_response_head(reader, TIMEOUT)
            assert interim.startswith(b"HTTP/1.1 100 "), interim
            writer.write(b"800\r\n" + b"x" * 2048 + b"\r\n")
            head = await read_response_head(reader, TIMEOUT)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"access-control-allow-origin: " + FRONT_END.encode() in head.lower()
