"""Text that is not Unicode is refused at the door, over real sockets.

JSON may escape a lone UTF-16 surrogate (``"\\ud800"``) and Python's decoder turns it
into a ``str`` that no encoder accepts; the same string comes from UTF-8 bytes
``ED A0 80``, which the decoder lets through too. Every endpoint that takes text
answers such a body with a 400 in OpenAI's shape that names the field, logs no
traceback, and goes on serving.
"""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from tests.app.conftest import TIMEOUT, FakeAppFactory

LONE = "\\ud800"  # a lone surrogate as a JSON escape (the bytes stay ASCII)
RAW_LONE = "\udfff"  # encoded with surrogatepass below: the bytes ED BF BF
MESSAGES = [{"role": "user", "content": "hi"}]


def raw(obj: object) -> bytes:
    """``obj`` as JSON bytes, letting lone surrogates through as UTF-8 (ED xx xx)."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def escaped(text: str) -> bytes:
    """A body written by hand: ``text`` is JSON already and may hold ``\\udXXX``."""
    return text.encode()


def chat_body(**fields: object) -> dict[str, object]:
    return {"messages": MESSAGES, "max_tokens": 2, **fields}


#: (path, body, param) for each string field an endpoint uses.
CASES: list[tuple[str, str, bytes, str]] = [
    (
        "chat content, 4th message",
        "/v1/chat/completions",
        escaped(
            '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},'
            ' {"role": "assistant", "content": "b"},'
            f' {{"role": "user", "content": "x{LONE}y"}}], "max_tokens": 2}}'
        ),
        "messages[3].content",
    ),
    (
        "chat content, raw UTF-8 surrogate",
        "/v1/chat/completions",
        raw(chat_body(messages=[{"role": "user", "content": "é" + RAW_LONE}])),
        "messages[0].content",
    ),
    (
        "chat text part, streaming",
        "/v1/chat/completions",
        escaped(
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "ok"},'
            f' {{"type": "text", "text": "{LONE}"}}]}}], "stream": true, "max_tokens": 2}}'
        ),
        "messages[0].content[1].text",
    ),
    (
        "chat role",
        "/v1/chat/completions",
        escaped(f'{{"messages": [{{"role": "user{LONE}", "content": "hi"}}]}}'),
        "messages[0].role",
    ),
    (
        "chat stop list, streaming",
        "/v1/chat/completions",
        escaped(
            '{"messages": [{"role": "user", "content": "hi"}], "stream": true,'
            f' "stop": ["ok", "{LONE}"]}}'
        ),
        "stop[1]",
    ),
    (
        "chat model",
        "/v1/chat/completions",
        escaped(f'{{"model": "m{LONE}", "messages": [{{"role": "user", "content": "hi"}}]}}'),
        "model",
    ),
    (
        "completion prompt",
        "/v1/completions",
        escaped(f'{{"prompt": "Once {LONE}", "max_tokens": 2}}'),
        "prompt",
    ),
    (
        "completion prompt, batch of one, streaming",
        "/v1/completions",
        escaped(f'{{"prompt": ["{LONE}"], "max_tokens": 2, "stream": true}}'),
        "prompt",
    ),
    (
        "completion stop string",
        "/v1/completions",
        escaped(f'{{"prompt": "Once", "stop": "{LONE}"}}'),
        "stop",
    ),
    (
        "generation content",
        "/v1/generations",
        escaped(f'{{"messages": [{{"role": "user", "content": "{LONE}"}}]}}'),
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_unencodable_text_is_a_400_and_the_server_carries_on(
    fake_app: FakeAppFactory,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: bytes,
    param: str,
) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        refused = await client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("application/json")
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert error["code"] in ("invalid_unicode", "invalid_value")
        assert param in error["message"]
        assert running.engine.requests == []  # refused before the engine saw it

        # The same connection, and the server, serve the next request.
        ok = await client.post("/v1/chat/completions", json=chat_body())
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["finish_reason"] == "length"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_surrogate_codes_name_the_problem(fake_app: FakeAppFactory) -> None:
    """Content, stop and model get the specific code; a role is merely not a role."""
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client,
    ):
        content = await client.post("/v1/chat/completions", content=CASES[0][2])
        assert content.json()["error"]["code"] == "invalid_unicode"
        assert "surrogate" in content.json()["error"]["message"]
        role = await client.post("/v1/chat/completions", content=CASES[3][2])
        assert role.json()["error"]["code"] == "invalid_value"


async def test_openai_sdk_gets_a_bad_request_error(fake_app: FakeAppFactory) -> None:
    """The SDK cannot send a lone surrogate itself; a body sent for it raises cleanly."""
    async with fake_app() as running:
        client = openai.AsyncOpenAI(
            base_url=running.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
        )
        try:
            with pytest.raises(openai.BadRequestError) as info:
                await client.post(
                    "/chat/completions",
                    cast_to=httpx.Response,
                    content=CASES[0][2],
                    options={"headers": {"content-type": "application/json"}},
                )
            assert info.value.status_code == 400
            assert info.value.param == "messages[3].content"
            assert info.value.code == "invalid_unicode"
            reply = await client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].finish_reason == "length"
        finally:
            await client.close()
