"""Log-probabilities in the OpenAI API: parsing the fields, writing both formats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rawstream.sansio.logprobs import (
    MAX_COMPLETION_LOGPROBS,
    MAX_TOP_LOGPROBS,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
)
from rawstream.sansio.openai import (
    APIError,
    ChunkEncoder,
    Kind,
    chat_completion_body,
    parse_chat_completion,
    parse_completion,
    text_completion_body,
)
from rawstream.sansio.sse import SSEParser
from rawstream.sansio.values import FinishReason, Result, TokenLogprob, Usage

STOP = Result(FinishReason.STOP, Usage(3, 2))


def token(text: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    alternatives = tuple(TokenLogprob(t, t.encode(), v) for t, v in top)
    return TokenLogprob(text, text.encode(), logprob, alternatives)


HI = token("Hi", -0.25, ("Hi", -0.25), ("Hello", -1.5))
THERE = token(" there", -0.75, (" you", -0.5), (" there", -0.75))
#: "é" split over two tokens: each token's text shows U+FFFD, its bytes are exact.
E1 = TokenLogprob("\ufffd", b"\xc3", -0.1, (TokenLogprob("\ufffd", b"\xc3", -0.1),))
E2 = TokenLogprob("\ufffd", b"\xa9", -0.2, (TokenLogprob("\ufffd", b"\xa9", -0.2),))


# --- parsing ------------------------------------------------------------------------------


def chat(**fields: Any) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def completion(**fields: Any) -> bytes:
    return json.dumps({"prompt": "Once", **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"logprobs": None}, None),
        ({"logprobs": False}, None),
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": None}, 0),
        ({"logprobs": True, "top_logprobs": 0}, 0),
        ({"logprobs": True, "top_logprobs": 3}, 3),
        ({"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS}, 20),
        ({"top_logprobs": None}, None),
    ],
)
def test_chat_logprobs_fields(fields: dict[str, Any], expected: int | None) -> None:
    assert parse_chat_completion(chat(**fields)).generation.logprobs == expected


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs", "invalid_value"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "invalid_value"),
        ({"logprobs": True, "top_logprobs": 2.0}, "top_logprobs", "invalid_type"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs", "invalid_type"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
        ({"logprobs": False, "top_logprobs": 0}, "top_logprobs", "invalid_value"),
        ({"logprobs": 1}, "logprobs", "invalid_type"),
        ({"logprobs": "true"}, "logprobs", "invalid_type"),
    ],
)
def test_chat_logprobs_errors(fields: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(APIError) as info:
        parse_chat_completion(chat(**fields))
    error = info.value
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.to_json()["error"]["type"] == "invalid_request_error"
    assert param in error.message


def test_top_logprobs_without_logprobs_says_why() -> None:
    with pytest.raises(APIError) as info:
        parse_chat_completion(chat(top_logprobs=2))
    assert "logprobs" in info.value.message and "true" in info.value.message


@pytest.mark.parametrize("n", range(MAX_COMPLETION_LOGPROBS + 1))
def test_completion_logprobs_field(n: int) -> None:
    assert parse_completion(completion(logprobs=n)).generation.logprobs == n
    assert parse_completion(completion()).generation.logprobs is None
    assert parse_completion(completion(logprobs=None)).generation.logprobs is None


@pytest.mark.parametrize(
    ("value", "code"), [(6, "invalid_value"), (-1, "invalid_value"), (True, "invalid_type")]
)
def test_completion_logprobs_errors(value: object, code: str) -> None:
    with pytest.raises(APIError) as info:
        parse_completion(completion(logprobs=value))
    assert (info.value.status, info.value.param, info.value.code) == (400, "logprobs", code)


# --- the two formats ----------------------------------------------------------------------


def test_chat_format() -> None:
    assert chat_logprobs([HI, E1]) == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.25,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                    {"token": "Hello", "logprob": -1.5, "bytes": [72, 101, 108, 108, 111]},
                ],
            },
            {
                "token": "\ufffd",
                "logprob": -0.1,
                "bytes": [0xC3],
                "top_logprobs": [{"token": "\ufffd", "logprob": -0.1, "bytes": [0xC3]}],
            },
        ]
    }
    assert chat_logprobs([TokenLogprob("a", b"a", -1.0)])["content"][0]["top_logprobs"] == []


def test_completion_format_adds_the_sampled_token_to_the_top() -> None:
    sampled_outside = token(" there", -2.0, (" you", -0.5))
    assert completion_logprobs([HI, sampled_outside]) == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.25, -2.0],
        "top_logprobs": [{"Hi": -0.25, "Hello": -1.5}, {" you": -0.5, " there": -2.0}],
        "text_offset": [0, 2],
    }
    # logprobs=0: the sampled token only, as "up to logprobs+1 elements" allows.
    assert completion_logprobs([token("a", -0.5)])["top_logprobs"] == [{"a": -0.5}]


def test_completion_format_same_text_keeps_the_likelier() -> None:
    same = TokenLogprob("\ufffd", b"\xc3", -0.3, (E1.top[0], TokenLogprob("\ufffd", b"\xe2", -0.9)))
    assert completion_logprobs([same])["top_logprobs"] == [{"\ufffd": -0.1}]


def test_text_offsets_count_characters_of_the_text() -> None:
    # "é" is one character over two tokens; " there" starts at character 3 of "Hié there".
    assert completion_logprobs([HI, E1, E2, THERE])["text_offset"] == [0, 2, 2, 3]
    offsets = TextOffsets()
    assert completion_logprobs([HI, E1], offsets)["text_offset"] == [0, 2]
    assert completion_logprobs([E2, THERE], offsets)["text_offset"] == [2, 3]


# --- the bodies and the stream -------------------------------------------------------------


def test_bodies_carry_logprobs_only_when_given() -> None:
    plain = json.loads(chat_completion_body(id="c", created=1, model="m", text="Hi", result=STOP))
    assert plain["choices"][0]["logprobs"] is None
    body = chat_completion_body(
        id="c", created=1, model="m", text="Hi there", result=STOP, logprobs=[HI, THERE]
    )
    assert json.loads(body)["choices"][0]["logprobs"] == chat_logprobs([HI, THERE])
    empty = chat_completion_body(id="c", created=1, model="m", text="", result=STOP, logprobs=[])
    assert json.loads(empty)["choices"][0]["logprobs"] == {"content": []}
    text = text_completion_body(
        id="c", created=1, model="m", text="Hi there", result=STOP, logprobs=[HI, THERE]
    )
    assert json.loads(text)["choices"][0]["logprobs"] == completion_logprobs([HI, THERE])
    plain_text = text_completion_body(id="c", created=1, model="m", text="x", result=STOP)
    assert json.loads(plain_text)["choices"][0]["logprobs"] is None


def events(data: bytes) -> list[Any]:
    return [json.loads(e.data) for e in SSEParser().feed(data) if e.data != "[DONE]"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_with_logprobs(include_usage: bool) -> None:
    enc = ChunkEncoder(Kind.CHAT, id="c", created=1, model="m", include_usage=include_usage)
    stream = enc.start() + enc.delta("Hi", (HI,)) + enc.delta(" there", [THERE]) + enc.finish(STOP)
    chunks = events(stream)
    role, first, second, end = chunks[:4]
    assert role["choices"][0]["logprobs"] is None
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"content": "Hi"},
        "logprobs": chat_logprobs([HI]),
        "finish_reason": None,
    }
    assert second["choices"][0]["logprobs"] == chat_logprobs([THERE])
    assert end["choices"][0]["logprobs"] is None
    assert ("usage" in first) is include_usage
    # The same keys, in the same order, as a chunk without logprobs.
    plain = json.loads(enc_plain(Kind.CHAT, include_usage).delta("Hi")[len(b"data: ") :])
    assert list(first) == list(plain) and list(first["choices"][0]) == list(plain["choices"][0])


def enc_plain(kind: Kind, include_usage: bool = False) -> ChunkEncoder:
    return ChunkEncoder(kind, id="c", created=1, model="m", include_usage=include_usage)


def test_text_chunks_carry_offsets_across_the_stream() -> None:
    enc = enc_plain(Kind.TEXT)
    chunks = events(enc.delta("Hi\u00e9", (HI, E1, E2)) + enc.delta(" there", (THERE,)))
    assert chunks[0]["choices"][0]["text"] == "Hi\u00e9"
    assert chunks[0]["choices"][0]["logprobs"]["text_offset"] == [0, 2, 2]
    assert chunks[1]["choices"][0]["logprobs"] == {
        "tokens": [" there"],
        "token_logprobs": [-0.75],
        "top_logprobs": [{" you": -0.5, " there": -0.75}],
        "text_offset": [3],
    }


def test_a_delta_without_logprobs_is_the_plain_chunk() -> None:
    for kind in Kind:
        assert enc_plain(kind).delta("x", ()) == enc_plain(kind).delta("x")


def test_no_delta_with_logprobs_after_the_end() -> None:
    enc = enc_plain(Kind.CHAT)
    enc.finish(STOP)
    with pytest.raises(ValueError):
        enc.delta("x", (HI,))


def test_openai_sdk_reads_the_logprobs() -> None:
    chat_types = pytest.importorskip("openai.types.chat")
    completion_types = pytest.importorskip("openai.types")
    enc = enc_plain(Kind.CHAT)
    chunk = chat_types.ChatCompletionChunk.model_validate(events(enc.delta("Hi", (HI,)))[0])
    content = chunk.choices[0].logprobs.content
    assert content[0].token == "Hi" and content[0].top_logprobs[1].bytes == list(b"Hello")
    body = chat_completion_body(id="c", created=1, model="m", text="Hi", result=STOP, logprobs=[HI])
    whole = chat_types.ChatCompletion.model_validate_json(body)
    assert whole.choices[0].logprobs.content[0].logprob == -0.25
    text = text_completion_body(id="c", created=1, model="m", text="Hi", result=STOP, logprobs=[HI])
    legacy = completion_types.Completion.model_validate_json(text)
    assert legacy.choices[0].logprobs.top_logprobs == [{"Hi": -0.25, "Hello": -1.5}]
