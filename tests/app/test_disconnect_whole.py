"""A non-streaming completion and a client's EOF: answered after a half-close,
cancelled after a close.

TCP shows both as a FIN; the connection tells them apart by writing interim
``100 Continue`` responses (see ``rawstream/server/connection.py``). These tests use
raw sockets, since neither httpx nor the SDKs can half-close.
"""

from __future__ import annotations

import asyncio
import json

from rawstream.engine.base import FinishReason
from tests.app.conftest import TIMEOUT, FakeAppFactory


def _request(max_tokens: int) -> bytes:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": max_tokens}
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_a_client_that_closes_during_a_whole_completion_cancels_it(
    fake_app: FakeAppFactory,
) -> None:
    # 20 tokens/s and 10,000 tokens: without the probe this runs for minutes.
    async with fake_app(fake_tokens_per_s=20.0) as running:
        _reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(_request(10_000))
        await writer.drain()
        (stream,) = await running.engine.wait_submitted(1)
        writer.close()  # a full close: the server sees only a FIN
        await writer.wait_closed()
        result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
        assert result.finish_reason is FinishReason.CANCELLED


async def test_a_client_that_half_closes_gets_the_whole_completion(
    fake_app: FakeAppFactory,
) -> None:
    # 100 tokens at 100 tokens/s: about a second, so several probes go out first.
    async with fake_app(fake_tokens_per_s=100.0) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(_request(100))
        await writer.drain()
        writer.write_eof()  # shutdown(SHUT_WR): a half-close; the client still reads
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
    interim = raw.count(b"HTTP/1.1 100 Continue\r\n\r\n")
    final = raw.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    assert interim >= 1, raw[:200]
    head, _, body = final.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    reply = json.loads(body)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 100
