"""Real clients against the server: curl, httpx (+ httpx-sse), aiohttp, websockets, h2load.

Each client has its own parser and its own opinion of what is valid; a server that
only passes its own tests can still fail them (h2load, for one, counts a response
with an empty reason phrase as failed). External programs run as asyncio
subprocesses so the in-process server keeps running on the same loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import httpx_sse
import websockets
from websockets.asyncio.client import connect as ws_connect

from rawstream.sansio.upgrade import UpgradeAccepted, check_upgrade
from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from tests.support import serve

SUBPROTOCOLS = ("rawstream.v2", "rawstream.v1")  # what the server speaks, preferred first


async def app(exchange: Exchange) -> None:
    request = exchange.request
    if exchange.is_websocket_upgrade:
        decision = check_upgrade(request)
        chosen = None
        if isinstance(decision, UpgradeAccepted):
            chosen = next((p for p in SUBPROTOCOLS if p in decision.offered), None)
        websocket = await exchange.accept_websocket(subprotocol=chosen)
        try:
            while True:
                await websocket.send(await websocket.receive())
        except WebSocketClosed:
            return
    if request.path == "/json":
        await exchange.respond(200, b'{"ok":true}')
    elif request.path == "/echo":
        await exchange.respond(200, await exchange.body(), content_type=b"text/plain")
    elif request.path == "/events":
        sse = await exchange.start_sse()
        for i in range(3):
            await sse.send(f"id: {i}\ndata: token {i}\n\n".encode())
        await sse.end(b"data: [DONE]\n\n")
    else:
        await exchange.respond(404, b'{"error":"not found"}')


async def run(*argv: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------------- curl
async def test_curl_json_post_and_sse() -> None:
    async with serve(app) as running:
        code, out, err = await run("curl", "-sS", "--fail", f"{running.url}/json")
        assert (code, out) == (0, '{"ok":true}'), err
        code, out, err = await run("curl", "-sS", "--fail", "-d", "abc=1", f"{running.url}/echo")
        assert (code, out) == (0, "abc=1"), err
        code, out, err = await run("curl", "-sN", "--fail", f"{running.url}/events")
        assert code == 0, err
        assert out == "".join(f"id: {i}\ndata: token {i}\n\n" for i in range(3)) + (
            "data: [DONE]\n\n"
        )
        # curl -i shows the status line with its reason phrase.
        code, out, err = await run("curl", "-si", f"{running.url}/missing")
        assert out.startswith("HTTP/1.1 404 Not Found\r\n"), out


async def test_curl_expect_100_continue_upload(tmp_path: Path) -> None:
    """curl sends ``Expect: 100-continue`` for bodies over 1 MiB and waits for the 100."""
    payload = "x" * (1024 * 1024 + 10)
    upload = tmp_path / "upload.txt"
    upload.write_text(payload)
    async with serve(app, max_body_bytes=4 * 1024 * 1024) as running:
        code, out, err = await run(
            "curl", "-sS", "-v", "--fail", "--data-binary", f"@{upload}", f"{running.url}/echo"
        )
        assert code == 0, err
        assert out == payload
        assert "Expect: 100-continue" in err and "HTTP/1.1 100 Continue" in err


# ---------------------------------------------------------------------- httpx
async def test_httpx_requests_and_sse() -> None:
    async with serve(app) as running, httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/json")).json() == {"ok": True}
        response = await client.post("/echo", content=b"payload")
        assert (response.status_code, response.content) == (200, b"payload")
        response = await client.get("/missing")
        assert (response.status_code, response.reason_phrase) == (404, "Not Found")

        async def chunks() -> AsyncIterator[bytes]:
            yield b"chunked "
            yield b"upload"

        response = await client.post("/echo", content=chunks())  # sent chunked
        assert response.content == b"chunked upload"

        async with httpx_sse.aconnect_sse(client, "GET", "/events") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [(e.id, e.data) async for e in source.aiter_sse()]
        assert events == [("0", "token 0"), ("1", "token 1"), ("2", "token 2"), ("2", "[DONE]")]
        assert running.server.statistics().accepted_total == 1  # all on one connection


# ---------------------------------------------------------------------- aiohttp
async def test_aiohttp_http_and_websocket() -> None:
    async with serve(app, ws_ping_interval=0) as running, aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/json") as response:
            assert response.status == 200 and response.reason == "OK"
            assert await response.json() == {"ok": True}
        async with session.post(f"{running.url}/echo", data=b"aio") as response:
            assert await response.read() == b"aio"
        async with session.get(f"{running.url}/events") as response:
            body = await response.read()
            assert body.endswith(b"data: [DONE]\n\n")
        async with session.ws_connect(f"{running.ws_url}/ws", protocols=["rawstream.v1"]) as ws:
            assert ws.protocol == "rawstream.v1"
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=5) == "hello"
            await ws.send_bytes(b"\x00\x01\xff")
            assert await ws.receive_bytes(timeout=5) == b"\x00\x01\xff"
            await ws.close()
        assert ws.close_code == 1000


# ---------------------------------------------------------------------- websockets
async def test_websockets_text_binary_and_large() -> None:
    async with serve(app, ws_ping_interval=0) as running:
        async with ws_connect(f"{running.ws_url}/ws") as ws:
            assert ws.subprotocol is None
            await ws.send("héllo")
            assert await asyncio.wait_for(ws.recv(), 5) == "héllo"
            await ws.send(b"\x00" * 70_000)  # 64-bit length encoding
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00" * 70_000
            await ws.send(["frag", "mented"])  # a fragmented message
            assert await asyncio.wait_for(ws.recv(), 5) == "fragmented"
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
        assert ws.close_code == 1000


async def test_websockets_subprotocol_negotiation() -> None:
    async with serve(app, ws_ping_interval=0) as running:
        url = f"{running.ws_url}/ws"
        async with ws_connect(url, subprotocols=["other", "rawstream.v1", "rawstream.v2"]) as ws:
            assert ws.subprotocol == "rawstream.v2"  # the server's preference wins
        async with ws_connect(url, subprotocols=["rawstream.v1"]) as ws:
            assert ws.subprotocol == "rawstream.v1"
        # None of ours offered: the 101 names none (RFC 6455 4.2.2, step 5.4).
        async with ws_connect(url, subprotocols=["unknown"]) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers


async def test_websockets_oversize_message_is_closed_1009() -> None:
    async with (
        serve(app, ws_ping_interval=0, ws_max_message_bytes=1000) as running,
        ws_connect(f"{running.ws_url}/ws") as ws,
    ):
        await ws.send(b"x" * 1001)
        try:
            await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError("oversize message was echoed")
        except websockets.exceptions.ConnectionClosedError as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1009


# ---------------------------------------------------------------------- h2load
async def test_h2load_counts_every_response_as_succeeded() -> None:
    async with serve(app) as running:
        code, out, err = await run(
            "h2load", "--h1", "-n", "2000", "-c", "20", f"{running.url}/json", timeout=120
        )
    assert code == 0, out + err
    match = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    assert match is not None, out
    total, _started, done, succeeded, failed, errored, timeout = map(int, match.groups())
    assert (total, done, succeeded, failed, errored, timeout) == (2000, 2000, 2000, 0, 0, 0), out
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert status is not None and status.groups() == ("2000", "0", "0", "0"), out
