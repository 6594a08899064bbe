"""A first end-to-end check: a handler answers over a real socket."""

from __future__ import annotations

import httpx

from rawstream.server.exchange import Exchange
from tests.support import serve


async def hello(exchange: Exchange) -> None:
    await exchange.respond(200, b"hello", content_type=b"text/plain")


async def test_hello_with_keepalive() -> None:
    async with serve(hello) as running, httpx.AsyncClient(base_url=running.url) as client:
        first = await client.get("/")
        second = await client.get("/again")
        assert (first.status_code, first.text) == (200, "hello")
        assert second.text == "hello"
        assert running.server.statistics().accepted_total == 1  # one kept-alive connection
