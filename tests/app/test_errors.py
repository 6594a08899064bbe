"""Errors in OpenAI's shape: auth, admission (503 + Retry-After), bad requests, routing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from rawstream.engine.base import EngineState
from tests.app.conftest import TIMEOUT, FakeAppFactory
from tests.support import open_raw, read_response_head

CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert {"message", "type", "code"} <= set(error)
    assert isinstance(error, dict)
    return error


async def test_api_key(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(api_key=("k1",)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        body = {"messages": MESSAGES, "max_tokens": 2}
        for method, path in (
            ("POST", CHAT_PATH),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("POST", "/v1/generations"),
        ):
            response = await client.request(method, path, json=body)
            error = assert_openai_error(response, 401)
            assert error["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.post(CHAT_PATH, json=body, headers={"Authorization": "Bearer k2"})
        assert_openai_error(wrong, 401)
        ok = await client.post(CHAT_PATH, json=body, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["finish_reason"] == "length"
        scheme = await client.get("/v1/models", headers={"Authorization": "bearer k1"})
        assert scheme.status_code == 200  # the scheme is case-insensitive
        query = await client.get("/v1/models?api_key=k1")
        assert query.status_code == 200
        # public routes
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")


async def test_queue_full_gets_503_before_any_stream_header(fake_app: FakeAppFactory) -> None:
    async with fake_app(parallel=1, max_queue=1, fake_tokens_per_s=5.0) as running:
        engine = running.engine
        body = {"messages": MESSAGES, "max_tokens": 500, "stream": True}
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
            streams = [
                await client.send(client.build_request("POST", CHAT_PATH, json=body), stream=True)
                for _ in range(2)
            ]
            assert [s.status_code for s in streams] == [200, 200]
            stats = engine.statistics()
            assert (stats.active_streams, stats.queued_streams) == (1, 1)

            third = await client.post(CHAT_PATH, json=body)
            error = assert_openai_error(third, 503)
            assert error["code"] == "overloaded"
            assert int(third.headers["retry-after"]) >= 1
            assert "text/event-stream" not in third.headers["content-type"]
            # the same for a resumable generation
            gen = await client.post("/v1/generations", json=body)
            assert_openai_error(gen, 503)
            assert int(gen.headers["retry-after"]) >= 1
            for s in streams:
                await s.aclose()
        assert len(engine.streams) == 2
        for stream in engine.streams:
            await asyncio.wait_for(engine.ended(stream), TIMEOUT)
        assert engine.statistics().queued_streams == 0


async def test_not_ready_is_503(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        running.engine._state = EngineState.LOADING  # as if the model were loading
        health = await client.get("/health")
        assert health.status_code == 503
        response = await client.post(CHAT_PATH, json={"messages": MESSAGES})
        assert_openai_error(response, 503)
        assert "retry-after" in response.headers
        running.engine._state = EngineState.READY


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": true}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 5}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream_options": '
            b'{"include_usage": true}}',
            "stream_options",
        ),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', None),
        (b'{"model": "fake"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b"", None),
    ],
)
async def test_bad_requests_are_400(
    fake_app: FakeAppFactory, body: bytes, param: str | None
) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        response = await client.post(
            CHAT_PATH, content=body, headers={"content-type": "application/json"}
        )
        error = assert_openai_error(response, 400)
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        assert running.engine.streams == []  # nothing reached the engine


async def test_completions_needs_a_prompt(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        response = await client.post("/v1/completions", json={"messages": MESSAGES})
        assert_openai_error(response, 400)


async def test_routing(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        missing = await client.get("/v1/nothing")
        assert assert_openai_error(missing, 404)
        wrong = await client.get(CHAT_PATH)
        assert_openai_error(wrong, 405)
        assert "POST" in wrong.headers["allow"]
        wrong = await client.post("/v1/models")
        assert_openai_error(wrong, 405)
        assert "GET" in wrong.headers["allow"]
        models = await client.get("/v1/models")
        assert models.status_code == 200
        assert models.json()["object"] == "list"
        assert [m["id"] for m in models.json()["data"]] == ["fake"]


async def test_keep_alive_survives_an_error(fake_app: FakeAppFactory) -> None:
    """A 400 answered after reading the body leaves the connection usable."""
    async with fake_app() as running:
        reader, writer = await open_raw(running.port)
        try:
            bad = b"{nope"
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(bad), bad)
            )
            head = await read_response_head(reader, TIMEOUT)
            assert head.startswith(b"HTTP/1.1 400 ")
            assert b"connection: close" not in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
            writer.write(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            head = await read_response_head(reader, TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()


async def test_query_key_never_reaches_the_access_log(
    fake_app: FakeAppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        fake_app(api_key=("sekrit-key",), access_log=True) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        with caplog.at_level(logging.INFO, logger="rawstream.access"):
            ok = await client.get("/v1/models?x=1&api_key=sekrit-key&y=2")
            refused = await client.get("/v1/models?api_key=wrong-key")
    assert (ok.status_code, refused.status_code) == (200, 401)
    lines = [r.getMessage() for r in caplog.records if r.name == "rawstream.access"]
    assert len(lines) == 2
    assert "/v1/models?x=1&api_key=REDACTED&y=2" in lines[0]
    assert "/v1/models?api_key=REDACTED" in lines[1]
    assert not any("sekrit" in line or "wrong-key" in line for line in lines)
