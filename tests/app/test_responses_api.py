"""``POST /v1/responses`` through the ``openai`` SDK, curl and httpx, against a live app.

Protocol tests run on the fake engine (deterministic text: a streamed reply equals
the plain reply to the same request). The tests marked ``model`` run the SDK
against the real bundled model, loaded once for the module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx_sse
import openai
import pytest
import pytest_asyncio

from rawstream.app import responses_api
from rawstream.app.application import App
from rawstream.app.generation import Generation
from rawstream.config import Config
from rawstream.engine.base import EngineState, FinishReason
from rawstream.sansio.responses import ResponseEncoder, ResponseObject, parse_response_request
from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp, run_app

EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
DONE_ORDER = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def client(running: RunningApp, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT, **options
    )


def async_client(running: RunningApp) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT
    )


async def test_whole_response_through_the_sdk(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:

        def run() -> tuple[Any, Any]:
            with client(running) as sdk:
                cut = sdk.responses.create(
                    model="fake", input="tell me a story", max_output_tokens=12
                )
                whole = sdk.responses.create(
                    model="fake",
                    instructions="You are a storyteller.",
                    input=[{"role": "user", "content": [{"type": "input_text", "text": "go"}]}],
                )
                return cut, whole

        cut, whole = await asyncio.to_thread(run)
    assert cut.object == "response" and cut.id.startswith("resp_")
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert len(cut.output_text.split()) == 12
    assert cut.usage is not None and cut.usage.output_tokens == 12
    assert cut.usage.total_tokens == cut.usage.input_tokens + 12
    message = cut.output[0]
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant"
    assert whole.status == "completed" and whole.incomplete_details is None
    assert whole.instructions == "You are a storyteller."
    assert whole.output_text and whole.output[0].status == "completed"
    (request, _) = running.engine.requests
    assert request.max_tokens == 12


async def test_streamed_response_through_the_sdk(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:

        def run() -> tuple[list[Any], Any]:
            with client(running) as sdk:
                events = list(
                    sdk.responses.create(
                        model="fake", input="tell me a story", max_output_tokens=9, stream=True
                    )
                )
                whole = sdk.responses.create(
                    model="fake", input="tell me a story", max_output_tokens=9
                )
                return events, whole

        events, whole = await asyncio.to_thread(run)
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types == [
        *EVENT_ORDER,
        *["response.output_text.delta"] * len(deltas),
        *DONE_ORDER,
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in deltas)
    assert text == whole.output_text
    assert {e.item_id for e in deltas} == {events[2].item.id}
    assert events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == 9  # fmt: skip


async def test_stream_helper_of_the_sdk(fake_app: FakeAppFactory) -> None:
    """``client.responses.stream()``: text events, then the final response."""
    async with (
        fake_app() as running,
        async_client(running) as sdk,
        sdk.responses.stream(model="fake", input="tell me a story") as stream,
    ):
        pieces = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert "".join(pieces) == final.output_text
    assert len(final.output_text.split()) == 64  # the fake engine's end of generation


async def test_curl_reads_named_events(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        body = {"model": "fake", "input": "tell me a story", "max_output_tokens": 3, "stream": True}
        proc = await asyncio.create_subprocess_exec(
            "curl", "-N", "-sS", "--fail-with-body", "-D", "-",
            "-H", "content-type: application/json",
            "-d", json.dumps(body), running.url + "/v1/responses",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, out
    head, _, stream = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK")
    assert "content-type: text/event-stream" in head.lower()
    events = [e.split("\n") for e in stream.split("\n\n") if e]
    for event_line, data_line in events:
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
    assert events[-1][0] == "event: response.incomplete"
    assert "[DONE]" not in stream


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (
            {"input": "hi", "tools": [{"type": "function", "name": "f"}]},
            "tools",
            "unsupported_parameter",
        ),
        (
            {"input": "hi", "previous_response_id": "resp_1"},
            "previous_response_id",
            "unsupported_parameter",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
            "unsupported_content",
        ),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ],
)
async def test_bad_input_is_400_in_openais_shape(
    fake_app: FakeAppFactory, body: dict[str, Any], param: str, code: str
) -> None:
    async with fake_app() as running, async_client(running) as sdk:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.responses.create(model="fake", stream=stream, **body)
            assert caught.value.status_code == 400
            error = caught.value.body
            assert isinstance(error, dict)
            assert (error["param"], error["code"]) == (param, code)
            assert error["type"] == "invalid_request_error"
        assert running.engine.streams == []  # nothing reached the engine


async def test_overload_is_503_with_retry_after(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(parallel=1, max_queue=0, fake_tokens_per_s=20.0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
    ):
        busy = {"input": "hi", "max_output_tokens": 1000, "stream": True}
        async with http.stream("POST", "/v1/responses", json=busy) as first:
            assert first.status_code == 200
            second = await http.post("/v1/responses", json={"input": "hi"})
            assert second.status_code == 503
            assert int(second.headers["retry-after"]) >= 1
            assert second.json()["error"]["code"] == "overloaded"


async def test_client_leaving_mid_stream_cancels_its_generation(
    fake_app: FakeAppFactory,
) -> None:
    async with (
        fake_app(fake_tokens_per_s=50.0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
    ):
        body = {"input": "go on", "max_output_tokens": 1000, "stream": True}
        async with httpx_sse.aconnect_sse(http, "POST", "/v1/responses", json=body) as source:
            names = []
            async for event in source.aiter_sse():
                names.append(event.event)
                if names.count("response.output_text.delta") == 3:
                    break
        (stream,) = running.engine.streams
        result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
    assert result.finish_reason is FinishReason.CANCELLED
    assert result.usage.completion_tokens < 1000


async def test_shutdown_ends_the_stream_with_response_failed(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=20.0) as running, async_client(running) as sdk:
        sdk_stream = await sdk.responses.create(
            model="fake", input="go on", max_output_tokens=1000, stream=True
        )
        events = []
        async for event in sdk_stream:
            events.append(event)
            if event.type == "response.output_text.delta":
                break
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http:
            body = {"input": "go on", "max_output_tokens": 1000, "stream": True}
            async with http.stream("POST", "/v1/responses", json=body) as raw:
                chunks = raw.aiter_bytes()
                received = [await anext(chunks)]
                shutdown = asyncio.create_task(running.app.server.shutdown())
                # The SDK sees the failure as an event (not a connection error).
                events += [event async for event in sdk_stream]
                received += [chunk async for chunk in chunks]  # ends cleanly
            await asyncio.wait_for(shutdown, TIMEOUT)
        for stream in running.engine.streams:
            result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.message == "the server is shutting down"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    wire = b"".join(received).decode()
    names = [line.removeprefix("event: ") for line in wire.split("\n") if line.startswith("event:")]
    assert names[-1] == "response.failed" and names.count("response.failed") == 1
    assert "response.completed" not in names and "response.output_text.done" not in names


class PausedSSE:
    """An SSE writer whose client stops reading at the ``pause_at``-th send."""

    def __init__(self, pause_at: int) -> None:
        self.written: list[bytes] = []
        self.sends = 0
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self.closed = False
        self.reading = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self.sends += 1
        if self.sends == self.pause_at and not self.reading.is_set():
            self.paused.set()
            await self.reading.wait()  # the transport's write is paused
        self.written.append(data)

    async def end(self, final: bytes = b"") -> None:
        if final:
            await self.send(final)
        self.closed = True


class ShuttingDownExchange:
    """What ``_stream`` reads of an exchange."""

    def __init__(self, sse: PausedSSE) -> None:
        self.sse = sse
        self.shutting_down = False
        self.log_extra: dict[str, object] = {}

    async def start_sse(self, **_: object) -> PausedSSE:
        return self.sse


async def test_shutdown_while_the_client_is_not_reading_loses_no_event(
    fake_app: FakeAppFactory,
) -> None:
    """The events a paused send held back are written before ``response.failed``.

    A stream cancelled by shutdown while its client was not reading would otherwise
    skip a sequence number and miss text that the failed response reports.
    """
    async with fake_app() as running:
        request = parse_response_request(b'{"input": "go on", "max_output_tokens": 1000}')
        gen = await Generation.submit(running.app.engine, running.app.metrics, request.generation)
        encoder = ResponseEncoder(ResponseObject("resp_1", 1, "fake", request), item_id="msg_1")
        sse = PausedSSE(pause_at=4)  # the opening events, two deltas, then the third
        exchange = ShuttingDownExchange(sse)
        task = asyncio.create_task(responses_api._stream(exchange, gen, encoder))  # type: ignore[arg-type]
        await asyncio.wait_for(sse.paused.wait(), TIMEOUT)
        exchange.shutting_down = True
        sse.reading.set()  # the client reads again, after the cancel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
    events = [
        json.loads(line.removeprefix(b"data: "))
        for chunk in sse.written
        for line in chunk.split(b"\n")
        if line.startswith(b"data: ")
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events][-4:] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == deltas
    assert sse.closed


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
    url = f"http://127.0.0.1:{model_app.server.port}/v1"

    def run() -> tuple[Any, list[Any]]:
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120) as sdk:
            whole = sdk.responses.create(
                model="any",
                instructions="You are a helpful assistant.",
                input="Name three colours.",
                max_output_tokens=8,
                temperature=0,
            )
            events = list(
                sdk.responses.create(
                    model="any", input="Name three colours.", max_output_tokens=8, stream=True
                )
            )
            return whole, events

    whole, events = await asyncio.to_thread(run)
    assert whole.status in ("completed", "incomplete") and whole.output_text
    assert whole.usage is not None and 1 <= whole.usage.output_tokens <= 8
    assert "SmolLM2" in whole.model
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text
