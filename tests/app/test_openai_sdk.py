"""The unchanged ``openai`` SDK against the app serving the real bundled model.

The model (SmolLM2-135M-Instruct) is loaded once for this module, in-process, on
the module's event loop. The synchronous client blocks, so it runs in a worker
thread (``asyncio.to_thread``) while the server runs in the loop. Replies are
kept short (a few tokens); the text itself is not checked, only its shape.

The 4-stream run prints time to first token and tokens per second (the figures of
the report); it asserts only that every stream completes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import EngineState
from tests.app.conftest import run_app

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

#: Generous: the model contends for two cores with everything else on the machine.
TIMEOUT = 120.0
MESSAGES: Any = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours."},
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model_app() -> AsyncIterator[App]:
    """The app with the default engine (llama, the bundled model), once per module."""
    async with run_app(App(Config(port=0, access_log=False))) as app:
        assert app.engine.state is EngineState.READY
        yield app


def base_url(app: App) -> str:
    return f"http://127.0.0.1:{app.server.port}/v1"


def sync_client(app: App) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(app), api_key="none", max_retries=0, timeout=TIMEOUT)


def async_client(app: App) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url(app), api_key="none", max_retries=0, timeout=TIMEOUT
    )


async def test_models_list(model_app: App) -> None:
    def run() -> list[str]:
        with sync_client(model_app) as client:
            return [m.id for m in client.models.list()]

    assert await asyncio.to_thread(run) == [model_app.engine.model_name]
    assert "SmolLM2" in model_app.engine.model_name


async def test_sync_chat_plain_and_streamed(model_app: App) -> None:
    def run() -> tuple[Any, list[Any]]:
        with sync_client(model_app) as client:
            whole = client.chat.completions.create(
                model="any", messages=MESSAGES, max_tokens=6, temperature=0
            )
            chunks = list(
                client.chat.completions.create(
                    model="any",
                    messages=MESSAGES,
                    max_tokens=6,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            return whole, chunks

    whole, chunks = await asyncio.to_thread(run)
    assert whole.object == "chat.completion"
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert 1 <= whole.usage.completion_tokens <= 6
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *body, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and 1 <= usage_chunk.usage.completion_tokens <= 6
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in body)
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text
    assert body[-1].choices[0].finish_reason in ("stop", "length")
    assert [c.choices[0].finish_reason for c in body[:-1]] == [None] * (len(body) - 1)


async def test_async_chat_plain_and_streamed(model_app: App) -> None:
    async with async_client(model_app) as client:
        whole = await client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=5)
        assert whole.choices[0].message.content
        assert whole.choices[0].finish_reason in ("stop", "length")
        stream = await client.chat.completions.create(
            model="any", messages=MESSAGES, max_tokens=5, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)  # no include_usage, no usage chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


async def test_completions(model_app: App) -> None:
    def run() -> tuple[Any, list[Any]]:
        with sync_client(model_app) as client:
            whole = client.completions.create(
                model="any", prompt="The capital of France is", max_tokens=4, temperature=0
            )
            chunks = list(
                client.completions.create(
                    model="any",
                    prompt="The capital of France is",
                    max_tokens=4,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            return whole, chunks

    whole, chunks = await asyncio.to_thread(run)
    assert whole.object == "text_completion"
    assert whole.choices[0].text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and 1 <= whole.usage.completion_tokens <= 4
    *body, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert "".join(c.choices[0].text for c in body)
    assert body[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "bad",
    [{"temperature": 5}, {"n": 2}, {"max_tokens": 0}, {"top_p": 1.5}],
    ids=["temperature", "n", "max_tokens", "top_p"],
)
async def test_bad_request_raises_bad_request_error(model_app: App, bad: dict[str, Any]) -> None:
    def run() -> None:
        with sync_client(model_app) as client:
            client.chat.completions.create(model="any", messages=MESSAGES, **bad)

    with pytest.raises(openai.BadRequestError) as caught:
        await asyncio.to_thread(run)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == next(iter(bad))
    async with async_client(model_app) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="any", messages=MESSAGES, stream=True, **bad)


async def test_four_concurrent_streams(model_app: App) -> None:
    """Four streamed chats at once, batched by the engine: all complete."""
    prompts = [
        "Write a short poem about the sea.",
        "Explain what a CPU does.",
        "List some fruits.",
        "Tell me about the moon.",
    ]
    max_tokens = 48

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[float, float, int, str]:
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        finish = ""
        stream = await client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        ended = time.perf_counter()
        assert first is not None
        return first - started, ended - first, tokens, finish

    async with async_client(model_app) as client:
        wall = time.perf_counter()
        results = await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.perf_counter() - wall
    assert [r[3] in ("stop", "length") for r in results] == [True] * 4
    assert all(r[2] >= 1 for r in results)
    total = sum(r[2] for r in results)
    ttfts = [r[0] for r in results]
    rates = [r[2] / r[1] for r in results if r[1] > 0]
    print(
        f"\n4-stream run: failures 0/4, TTFT median {statistics.median(ttfts) * 1000:.0f} ms "
        f"(max {max(ttfts) * 1000:.0f} ms), per-stream {statistics.median(rates):.1f} tokens/s "
        f"(median), aggregate {total / wall:.1f} tokens/s, {total} tokens in {wall:.2f} s"
    )
