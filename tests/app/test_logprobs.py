"""Log-probabilities through the OpenAI-compatible API, with real clients.

The first part runs the app on the fake engine (httpx, raw JSON and SSE); the second
the unchanged ``openai`` SDK against the real bundled model, loaded once for this
module (as in ``tests/app/test_openai_sdk.py``). The SDK is synchronous, so it runs
in a worker thread while the server runs in the module's loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import EngineState
from tests.app.conftest import FakeAppFactory, run_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Generous: the model contends for two cores with everything else on the machine.
TIMEOUT = 120.0
MESSAGES: Any = [{"role": "user", "content": "Name three colours."}]


def sse_chunks(body: str) -> list[Any]:
    events = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def check_chat_tokens(content: list[Any], top: int) -> None:
    for item in content:
        assert item["logprob"] <= 0.0
        assert item["bytes"] == list(item["token"].encode())
        alternatives = item["top_logprobs"]
        assert len(alternatives) == top
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True)


# --- on the fake engine ---------------------------------------------------------------


async def test_chat_whole_and_streamed_on_the_fake(fake_app: FakeAppFactory) -> None:
    body = {"messages": MESSAGES, "max_tokens": 12, "seed": 4, "logprobs": True, "top_logprobs": 2}
    async with fake_app() as running, httpx.AsyncClient(base_url=running.url) as client:
        whole = (await client.post("/v1/chat/completions", json=body, timeout=TIMEOUT)).json()
        streamed = await client.post(
            "/v1/chat/completions", json={**body, "stream": True}, timeout=TIMEOUT
        )
        plain = (await client.post("/v1/chat/completions", json={"messages": MESSAGES})).json()
    choice = whole["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == whole["usage"]["completion_tokens"] == 12
    assert "".join(c["token"] for c in content) == choice["message"]["content"]
    check_chat_tokens(content, 2)
    chunks = sse_chunks(streamed.text)
    deltas = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk
    assert chunks[-1]["choices"][0]["logprobs"] is None  # the finish chunk
    streamed_content = [t for c in deltas for t in c["choices"][0]["logprobs"]["content"]]
    assert streamed_content == content  # the fake is deterministic
    assert plain["choices"][0]["logprobs"] is None
    assert running.engine.requests[-1].logprobs is None
    assert [r.logprobs for r in running.engine.requests[:2]] == [2, 2]


async def test_completions_whole_and_streamed_on_the_fake(fake_app: FakeAppFactory) -> None:
    body = {"prompt": "Once", "max_tokens": 10, "seed": 2, "logprobs": 3}
    async with fake_app() as running, httpx.AsyncClient(base_url=running.url) as client:
        whole = (await client.post("/v1/completions", json=body, timeout=TIMEOUT)).json()
        streamed = await client.post("/v1/completions", json={**body, "stream": True})
    choice = whole["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 10
    assert "".join(logprobs["tokens"]) == choice["text"]
    offsets = [len("".join(logprobs["tokens"][:i])) for i in range(10)]
    assert logprobs["text_offset"] == offsets
    for tok, value, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert value <= 0.0 and top[tok] == value and 3 <= len(top) <= 4
    merged: dict[str, list[Any]] = {k: [] for k in logprobs}
    for chunk in sse_chunks(streamed.text):
        part = chunk["choices"][0]["logprobs"]
        if part is not None:
            for key in merged:
                merged[key] += part[key]
    assert merged == logprobs  # offsets continue from chunk to chunk


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 2}, "logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ],
)
async def test_bad_logprobs_are_400_in_openai_shape(
    fake_app: FakeAppFactory, path: str, fields: dict[str, Any], param: str
) -> None:
    base = {"messages": MESSAGES} if "chat" in path else {"prompt": "Once"}
    async with fake_app() as running, httpx.AsyncClient(base_url=running.url) as client:
        response = await client.post(path, json={**base, **fields, "stream": True})
        after = await client.post(path, json={**base, "max_tokens": 2})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert len(running.engine.requests) == 1  # only the good request reached the engine
    assert after.status_code == 200


# --- the openai SDK against the real model ----------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model_app() -> AsyncIterator[App]:
    """The app with the default engine (llama, the bundled model), once per module."""
    async with run_app(App(Config(port=0, access_log=False))) as app:
        assert app.engine.state is EngineState.READY
        yield app


def sync_client(app: App) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{app.server.port}/v1",
        api_key="none",
        max_retries=0,
        timeout=TIMEOUT,
    )


def check_sdk_tokens(tokens: list[Any], top: int) -> None:
    """Each token: logprob <= 0, ``top`` alternatives sorted, greedy = the first."""
    assert tokens
    for token in tokens:
        assert token.logprob <= 0.0 and math.isfinite(token.logprob)
        assert len(token.top_logprobs) == top
        values = [alt.logprob for alt in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        best = token.top_logprobs[0]
        assert (best.token, best.bytes, best.logprob) == (token.token, token.bytes, token.logprob)


@pytest.mark.model
async def test_sdk_chat_logprobs_whole_and_streamed(model_app: App) -> None:
    def run() -> tuple[Any, list[Any]]:
        with sync_client(model_app) as client:
            args: Any = {
                "model": "any",
                "messages": MESSAGES,
                "max_tokens": 16,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 3,
            }
            whole = client.chat.completions.create(**args)
            chunks = list(client.chat.completions.create(**args, stream=True))
            return whole, chunks

    whole, chunks = await asyncio.to_thread(run)
    choice = whole.choices[0]
    tokens = choice.logprobs.content
    check_sdk_tokens(tokens, 3)
    assert "".join(t.token for t in tokens) == choice.message.content
    assert bytes(b for t in tokens for b in t.bytes).decode() == choice.message.content
    assert len(tokens) == whole.usage.completion_tokens
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in
                c.choices[0].logprobs.content]  # fmt: skip
    check_sdk_tokens(streamed, 3)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(t.token for t in streamed) == text


@pytest.mark.model
async def test_sdk_completions_logprobs(model_app: App) -> None:
    def run() -> tuple[Any, list[Any]]:
        with sync_client(model_app) as client:
            args: Any = {
                "model": "any",
                "prompt": "The capital of France is",
                "max_tokens": 6,
                "temperature": 0,
                "logprobs": 2,
            }
            return client.completions.create(**args), list(
                client.completions.create(**args, stream=True)
            )

    whole, chunks = await asyncio.to_thread(run)
    choice = whole.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.tokens) == whole.usage.completion_tokens
    for tok, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert value <= 0.0
        assert len(top) == 2 and top[tok] == value  # greedy: the sampled one is the first
        assert max(top.values()) == value
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == logprobs.tokens


@pytest.mark.model
@pytest.mark.parametrize(
    ("kind", "fields", "param"),
    [
        ("chat", {"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ("chat", {"top_logprobs": 3}, "top_logprobs"),
        ("text", {"logprobs": 6}, "logprobs"),
    ],
)
async def test_sdk_bad_logprobs_raise_bad_request(
    model_app: App, kind: str, fields: dict[str, Any], param: str
) -> None:
    def run() -> None:
        with sync_client(model_app) as client:
            if kind == "chat":
                client.chat.completions.create(model="any", messages=MESSAGES, **fields)
            else:
                client.completions.create(model="any", prompt="Once", **fields)

    with pytest.raises(openai.BadRequestError) as caught:
        await asyncio.to_thread(run)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param
    assert body["type"] == "invalid_request_error"
