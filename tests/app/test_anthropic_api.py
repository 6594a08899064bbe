"""``POST /v1/messages`` through the ``anthropic`` SDK, curl and httpx, against a live app.

Protocol tests run on the fake engine (deterministic text: a streamed reply equals
the plain reply to the same request). The tests marked ``model`` run the SDK
against the real bundled model, loaded once for the module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx_sse
import pytest
import pytest_asyncio

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import EngineState, FinishReason
from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp, run_app

USER: Any = [{"role": "user", "content": "tell me a story"}]
STREAM_ORDER = ["message_start", "content_block_start", "ping"]
END_ORDER = ["content_block_stop", "message_delta", "message_stop"]


def client(running: RunningApp, api_key: str = "none") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=running.url, api_key=api_key, max_retries=0, timeout=TIMEOUT
    )


def async_client(running: RunningApp, api_key: str = "none") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=running.url, api_key=api_key, max_retries=0, timeout=TIMEOUT
    )


async def test_whole_message_through_the_sdk(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:

        def run() -> tuple[Any, Any]:
            with client(running) as sdk:
                cut = sdk.messages.create(model="fake", max_tokens=12, messages=USER)
                ended = sdk.messages.create(
                    model="fake",
                    max_tokens=500,
                    system="You tell stories.",
                    messages=USER,
                    stop_sequences=["stream"],  # a word of the fake engine's vocabulary
                )
                return cut, ended

        cut, ended = await asyncio.to_thread(run)
    assert cut.type == "message" and cut.role == "assistant" and cut.id.startswith("msg_")
    assert cut.stop_reason == "max_tokens" and cut.stop_sequence is None
    (block,) = cut.content
    assert block.type == "text" and len(block.text.split()) == 12
    assert cut.usage.output_tokens == 12 and cut.usage.input_tokens > 0
    # Which stop sequence matched is not known to the app: end_turn, stop_sequence null.
    assert (ended.stop_reason, ended.stop_sequence) == ("end_turn", None)
    assert "stream" not in ended.content[0].text.split()
    assert ended.usage.output_tokens < 500
    first, second = running.engine.requests
    assert (first.max_tokens, second.max_tokens) == (12, 500)
    assert second.messages is not None and second.messages[0].role == "system"


async def test_streamed_message_through_the_sdk(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:

        def run() -> tuple[list[Any], Any]:
            with client(running) as sdk:
                events = list(
                    sdk.messages.create(model="fake", max_tokens=9, messages=USER, stream=True)
                )
                whole = sdk.messages.create(model="fake", max_tokens=9, messages=USER)
                return events, whole

        events, whole = await asyncio.to_thread(run)
    types = [e.type for e in events]  # the SDK skips ping
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert types == [*STREAM_ORDER[:2], *["content_block_delta"] * len(deltas), *END_ORDER]
    assert "".join(deltas) == whole.content[0].text
    assert events[0].message.usage.input_tokens == whole.usage.input_tokens
    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "max_tokens"
    assert message_delta.usage.output_tokens == 9


async def test_stream_helper_of_the_sdk(fake_app: FakeAppFactory) -> None:
    """``client.messages.stream()``: ``text_stream``, then ``get_final_message()``."""
    async with (
        fake_app() as running,
        async_client(running) as sdk,
        sdk.messages.stream(model="fake", max_tokens=20, messages=USER) as stream,
    ):
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == final.content[0].text  # type: ignore[union-attr]
    assert len(pieces) >= 1 and final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 20


async def test_curl_reads_named_events(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        body = {"model": "fake", "max_tokens": 3, "messages": USER, "stream": True}
        proc = await asyncio.create_subprocess_exec(
            "curl", "-N", "-sS", "--fail-with-body", "-D", "-",
            "-H", "content-type: application/json", "-H", "anthropic-version: 2023-06-01",
            "-d", json.dumps(body), running.url + "/v1/messages",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, out
    head, _, stream = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK")
    events = [e.split("\n") for e in stream.split("\n\n") if e]
    names = [event_line.removeprefix("event: ") for event_line, _ in events]
    assert names[:3] == STREAM_ORDER and names[-3:] == END_ORDER
    for name, (_, data_line) in zip(names, events, strict=True):
        assert json.loads(data_line.removeprefix("data: "))["type"] == name


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "fake", "messages": USER}, "max_tokens is required"),
        (
            {"model": "fake", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "role",
        ),
        (
            {
                "model": "fake",
                "max_tokens": 5,
                "messages": USER,
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            },
            "tools are not supported",
        ),
        (
            {
                "model": "fake",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
                ],
            },
            "only text content blocks",
        ),
        ({"model": "fake", "max_tokens": 5, "messages": USER, "temperature": 1.5}, "temperature"),
        (b"{not json", "JSON"),
    ],
)
async def test_bad_input_is_400_in_anthropics_shape(
    fake_app: FakeAppFactory, body: dict[str, Any] | bytes, message: str
) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
    ):
        for stream in (False, True):
            if isinstance(body, bytes):
                response = await http.post("/v1/messages", content=body)
            else:
                response = await http.post("/v1/messages", json={**body, "stream": stream})
            assert response.status_code == 400
            error = response.json()
            assert error["type"] == "error"
            assert error["error"]["type"] == "invalid_request_error"
            assert message in error["error"]["message"]
        assert running.engine.streams == []


async def test_sdk_raises_bad_request_error(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, async_client(running) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk.messages.create(
                model="fake",
                max_tokens=5,
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"name": "f", "input_schema": {"type": "object"}}],
            )
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"


async def test_overload_is_529_overloaded_error(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(parallel=1, max_queue=0, fake_tokens_per_s=20.0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
        async_client(running) as sdk,
    ):
        busy = {"model": "fake", "max_tokens": 1000, "messages": USER, "stream": True}
        async with http.stream("POST", "/v1/messages", json=busy) as first:
            assert first.status_code == 200
            with pytest.raises(anthropic.OverloadedError) as caught:
                await sdk.messages.create(model="fake", max_tokens=5, messages=USER)
            assert caught.value.status_code == 529
            assert int(caught.value.response.headers["retry-after"]) >= 1
            body = caught.value.body
            assert isinstance(body, dict) and body["type"] == "error"
            assert body["error"]["type"] == "overloaded_error"
            assert "overloaded" in body["error"]["message"]


async def test_x_api_key_authenticates(fake_app: FakeAppFactory) -> None:
    async with fake_app(api_key=("sk-right",)) as running:
        async with async_client(running, api_key="sk-right") as sdk:
            message = await sdk.messages.create(model="fake", max_tokens=2, messages=USER)
            assert message.usage.output_tokens == 2
        async with async_client(running, api_key="sk-wrong") as sdk:
            with pytest.raises(anthropic.AuthenticationError):
                await sdk.messages.create(model="fake", max_tokens=2, messages=USER)
    assert len(running.engine.streams) == 1


async def test_client_leaving_mid_stream_cancels_its_generation(
    fake_app: FakeAppFactory,
) -> None:
    async with (
        fake_app(fake_tokens_per_s=50.0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
    ):
        body = {"model": "fake", "max_tokens": 1000, "messages": USER, "stream": True}
        async with httpx_sse.aconnect_sse(http, "POST", "/v1/messages", json=body) as source:
            deltas = 0
            async for event in source.aiter_sse():
                deltas += event.event == "content_block_delta"
                if deltas == 3:
                    break
        (stream,) = running.engine.streams
        result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
    assert result.finish_reason is FinishReason.CANCELLED
    assert result.usage.completion_tokens < 1000


async def test_shutdown_ends_the_stream_with_an_error_event(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=20.0) as running, async_client(running) as sdk:
        body = {"model": "fake", "max_tokens": 1000, "messages": USER, "stream": True}
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http:
            async with http.stream("POST", "/v1/messages", json=body) as raw:
                chunks = raw.aiter_bytes()
                received = [await anext(chunks)]
                async with sdk.messages.stream(
                    model="fake", max_tokens=1000, messages=USER
                ) as helper:
                    texts = helper.text_stream
                    assert await anext(texts)
                    shutdown = asyncio.create_task(running.app.server.shutdown())
                    # The SDK raises on the error event (not a connection error).
                    with pytest.raises(anthropic.APIStatusError) as caught:
                        async for _text in texts:
                            pass
                received += [chunk async for chunk in chunks]  # ends cleanly
            await asyncio.wait_for(shutdown, TIMEOUT)
        for stream in running.engine.streams:
            result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {
        "type": "overloaded_error",
        "message": "the server is shutting down",
    }
    wire = b"".join(received).decode()
    names = [line.removeprefix("event: ") for line in wire.split("\n") if line.startswith("event:")]
    assert names[-1] == "error" and "message_stop" not in names and "message_delta" not in names


# --- the real model ----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model_app() -> AsyncIterator[App]:
    """The app with the bundled model, once for this module's model tests."""
    async with run_app(App(Config(port=0, access_log=False))) as app:
        assert app.engine.state is EngineState.READY
        yield app


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_real_model_through_the_sdk(model_app: App) -> None:
    url = f"http://127.0.0.1:{model_app.server.port}"
    messages: Any = [{"role": "user", "content": "Name three colours."}]

    def run() -> tuple[Any, list[str], Any]:
        with anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=120) as sdk:
            whole = sdk.messages.create(
                model="any",
                max_tokens=8,
                system="You are a helpful assistant.",
                messages=messages,
                extra_body={"temperature": 0},  # accepted; this SDK has no argument for it
            )
            with sdk.messages.stream(model="any", max_tokens=8, messages=messages) as stream:
                pieces = list(stream.text_stream)
                final = stream.get_final_message()
            return whole, pieces, final

    whole, pieces, final = await asyncio.to_thread(run)
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.content[0].text and 1 <= whole.usage.output_tokens <= 8
    assert "SmolLM2" in whole.model
    assert pieces and "".join(pieces) == final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
