"""OpenAI SSE streams read by ordinary clients (curl -N, httpx-sse), and disconnects.

The fake engine is deterministic (same request, same text), so a streamed reply
can be compared with the plain JSON reply to the same request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import httpx_sse

from rawstream.engine.base import FinishReason
from tests.app.conftest import TIMEOUT, FakeAppFactory

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "tell me a story"}]}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {**CHAT, **extra}


async def whole_reply(url: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_curl_reads_the_stream(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        body = chat_body(max_tokens=12, stream=True, stream_options={"include_usage": True})
        proc = await asyncio.create_subprocess_exec(
            "curl", "-N", "-sS", "--fail-with-body", "-D", "-",
            "-H", "content-type: application/json",
            "-d", json.dumps(body), running.url + "/v1/chat/completions",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0, out
        head, _, stream = out.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200 OK")
        assert "content-type: text/event-stream" in head.lower()
        events = [e for e in stream.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finish[-1] == "length" and set(finish[:-1]) == {None}
        usage = chunks[-1]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12

        whole = await whole_reply(running.url, chat_body(max_tokens=12))
        assert text == whole["choices"][0]["message"]["content"]
        assert len(text.split()) == 12


async def test_httpx_sse_reads_both_endpoints(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        for path, body, field in (
            ("/v1/chat/completions", chat_body(max_tokens=9, stream=True), "chat"),
            ("/v1/completions", {"prompt": "Once upon", "max_tokens": 9, "stream": True}, "text"),
        ):
            parts: list[str] = []
            data: list[str] = []
            async with httpx_sse.aconnect_sse(client, "POST", path, json=body) as source:
                assert source.response.headers["cache-control"] == "no-cache"
                assert source.response.headers["x-accel-buffering"] == "no"
                async for event in source.aiter_sse():
                    assert event.event == "message"
                    data.append(event.data)
            assert data[-1] == "[DONE]"
            for raw in data[:-1]:
                choice = json.loads(raw)["choices"][0]
                parts.append(
                    (choice["delta"].get("content") or "") if field == "chat" else choice["text"]
                )
            plain = dict(body, stream=False)
            whole = await whole_reply(running.url, plain, path)
            choice = whole["choices"][0]
            expected = choice["message"]["content"] if field == "chat" else choice["text"]
            assert "".join(parts) == expected
            assert choice["finish_reason"] == "length"


async def test_client_leaving_mid_stream_cancels_its_generation(
    fake_app: FakeAppFactory,
) -> None:
    async with fake_app(fake_tokens_per_s=50.0) as running:
        engine = running.engine
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
            body = chat_body(max_tokens=1000, stream=True)
            async with httpx_sse.aconnect_sse(
                client, "POST", "/v1/chat/completions", json=body
            ) as source:
                received = 0
                async for _event in source.aiter_sse():
                    received += 1
                    if received == 4:
                        break
            # leaving the block closed the connection mid-stream
        (stream,) = engine.streams
        result = await asyncio.wait_for(engine.ended(stream), TIMEOUT)
        assert result.finish_reason is FinishReason.CANCELLED
        assert result.usage.completion_tokens < 1000
        stats = engine.statistics()
        assert stats.cancelled_total == 1
        assert stats.busy_slots == 0 and stats.active_streams == 0


async def test_client_leaving_while_queued_frees_its_place(fake_app: FakeAppFactory) -> None:
    """A stream that never got a slot is removed from the queue when its client leaves."""
    async with fake_app(parallel=1, fake_tokens_per_s=20.0) as running:
        engine = running.engine
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
            body = chat_body(max_tokens=1000, stream=True)
            first = await client.send(
                client.build_request("POST", "/v1/chat/completions", json=body), stream=True
            )
            second = await client.send(
                client.build_request("POST", "/v1/chat/completions", json=body), stream=True
            )
            assert engine.statistics().queued_streams == 1
            await second.aclose()
            queued = engine.streams[1]
            result = await asyncio.wait_for(engine.ended(queued), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
            assert result.usage.completion_tokens == 0
            assert engine.statistics().queued_streams == 0
            assert engine.streams[0].result is None  # the first carries on
            await first.aclose()
            result = await asyncio.wait_for(engine.ended(engine.streams[0]), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
