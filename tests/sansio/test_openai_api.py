"""The OpenAI-compatible request parser and response encoders, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rawstream.engine.base import (
    ChatMessage,
    FinishReason,
    InvalidRequest,
    Overloaded,
    Result,
    Usage,
)
from rawstream.sansio.openai import (
    DONE,
    APIError,
    ChunkEncoder,
    Kind,
    chat_completion_body,
    chat_completion_from_json,
    completion_from_json,
    completion_id,
    error_for_result,
    models_body,
    parse_chat_completion,
    parse_completion,
    text_completion_body,
)
from rawstream.sansio.sse import SSEParser, encode_event

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "Once", **fields}).encode()


def chat_error(body: bytes) -> APIError:
    with pytest.raises(APIError) as info:
        parse_chat_completion(body)
    return info.value


# --- parsing: the happy paths ------------------------------------------------------------


def test_minimal_chat() -> None:
    request = parse_chat_completion(chat())
    assert request.kind is Kind.CHAT
    assert request.model == "m"
    assert not request.stream and not request.include_usage
    g = request.generation
    assert g.messages == (ChatMessage("user", "hi"),)
    assert g.prompt is None
    assert (g.temperature, g.top_p, g.max_tokens, g.seed, g.stop) == (1.0, 1.0, None, None, ())


def test_all_chat_fields() -> None:
    request = parse_chat_completion(
        chat(
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=0.5,
            max_tokens=7,
            presence_penalty=-2,
            frequency_penalty=2.0,
            seed=42,
            stop=["\n", "END"],
            n=1,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.1,
            user="someone",
            logit_bias={},
            tools=[],
            unknown={"nested": [1, 2]},
        )
    )
    g = request.generation
    assert request.stream and request.include_usage
    assert g.temperature == 0.0 and isinstance(g.temperature, float)
    assert (g.top_p, g.max_tokens, g.presence_penalty, g.frequency_penalty) == (0.5, 7, -2, 2)
    assert (g.seed, g.stop, g.top_k, g.min_p, g.repeat_penalty) == (
        42,
        ("\n", "END"),
        40,
        0.05,
        1.1,
    )


def test_nulls_mean_defaults() -> None:
    body = chat(
        model=None,
        stream=None,
        stream_options=None,
        temperature=None,
        top_p=None,
        max_tokens=None,
        n=None,
        stop=None,
        seed=None,
    )
    request = parse_chat_completion(body)
    assert request.model is None and not request.stream
    assert request.generation.temperature == 1.0 and request.generation.stop == ()


def test_str() -> None:
    request = parse_chat_completion(chat(stream=True, stream_options={"include_usage": True}))
    assert str(request) == "<chat.completion model='m' stream+usage>"
    assert str(parse_completion(completion())) == "<text_completion model='m' whole>"


def test_model_is_optional() -> None:
    request = parse_chat_completion(json.dumps({"messages": USER}).encode())
    assert request.model is None


def test_max_completion_tokens_alias_wins() -> None:
    assert parse_chat_completion(chat(max_completion_tokens=5)).generation.max_tokens == 5
    both = parse_chat_completion(chat(max_tokens=9, max_completion_tokens=5))
    assert both.generation.max_tokens == 5


def test_stop_string() -> None:
    assert parse_chat_completion(chat(stop="###")).generation.stop == ("###",)


def test_message_roles_and_content_parts() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "42", "tool_call_id": "x"},
        {"role": "user", "content": [], "name": "bob"},
    ]
    request = parse_chat_completion(json.dumps({"messages": messages}).encode())
    assert request.generation.messages == (
        ChatMessage("system", "be brief"),
        ChatMessage("system", "sys"),
        ChatMessage("user", "a\nb"),
        ChatMessage("assistant", ""),
        ChatMessage("tool", "42"),
        ChatMessage("user", ""),
    )


def test_completion() -> None:
    request = parse_completion(completion(max_tokens=3, stream=True))
    assert request.kind is Kind.TEXT and request.stream
    assert request.generation.prompt == "Once" and request.generation.messages is None
    assert parse_completion(completion(prompt=["one"])).generation.prompt == "one"
    assert parse_completion(completion(prompt="")).generation.prompt == ""


# --- parsing: errors ---------------------------------------------------------------------

ERROR_CASES: list[tuple[str, bytes, str | None]] = [
    ("malformed JSON", b'{"messages": [', None),
    ("empty body", b"", None),
    ("invalid UTF-8", b'{"model": "\xff"}', None),
    ("NaN", b'{"messages": [], "temperature": NaN}', None),
    ("Infinity", chat().replace(b"}", b', "temperature": Infinity}'), None),
    ("deeply nested", b"[" * 100_000, None),
    ("array body", b"[]", None),
    ("string body", b'"hi"', None),
    ("null body", b"null", None),
    ("model type", chat(model=3), "model"),
    ("missing messages", json.dumps({"model": "m"}).encode(), "messages"),
    ("messages not a list", chat(messages="hi"), "messages"),
    ("empty messages", chat(messages=[]), "messages"),
    ("message not an object", chat(messages=["hi"]), "messages[0]"),
    ("bad role", chat(messages=[{"role": "bot", "content": "x"}]), "messages[0].role"),
    ("missing role", chat(messages=[{"content": "x"}]), "messages[0].role"),
    ("content type", chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (
        "image part",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].type",
    ),
    (
        "part text type",
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
        "messages[0].content[0].text",
    ),
    (
        "part not an object",
        chat(messages=[USER[0], {"role": "user", "content": ["x"]}]),
        "messages[1].content[0]",
    ),
    ("temperature bool", chat(temperature=True), "temperature"),
    ("temperature string", chat(temperature="1"), "temperature"),
    ("temperature high", chat(temperature=2.01), "temperature"),
    ("temperature low", chat(temperature=-0.1), "temperature"),
    ("temperature huge", chat().replace(b"}", b', "temperature": 1e999}'), "temperature"),
    ("top_p high", chat(top_p=1.5), "top_p"),
    ("top_p low", chat(top_p=-1), "top_p"),
    ("presence high", chat(presence_penalty=2.5), "presence_penalty"),
    ("frequency low", chat(frequency_penalty=-3), "frequency_penalty"),
    ("max_tokens zero", chat(max_tokens=0), "max_tokens"),
    ("max_tokens float", chat(max_tokens=5.0), "max_tokens"),
    ("max_tokens bool", chat(max_tokens=True), "max_tokens"),
    ("max_tokens string", chat(max_tokens="5"), "max_tokens"),
    ("max_completion_tokens negative", chat(max_completion_tokens=-1), "max_completion_tokens"),
    ("n two", chat(n=2), "n"),
    ("n zero", chat(n=0), "n"),
    ("n bool", chat(n=True), "n"),
    ("stop five", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stop number", chat(stop=3), "stop"),
    ("stop list of numbers", chat(stop=[3]), "stop"),
    ("stop empty string", chat(stop=""), "stop"),
    ("seed float", chat(seed=1.5), "seed"),
    ("seed bool", chat(seed=False), "seed"),
    ("seed too big", chat(seed=2**64), "seed"),
    ("stream not bool", chat(stream=1), "stream"),
    (
        "stream_options without stream",
        chat(stream_options={"include_usage": True}),
        "stream_options",
    ),
    ("stream_options not object", chat(stream=True, stream_options=[]), "stream_options"),
    (
        "include_usage not bool",
        chat(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
    ),
    ("top_k negative", chat(top_k=-1), "top_k"),
    ("min_p high", chat(min_p=2), "min_p"),
    ("repeat_penalty zero", chat(repeat_penalty=0), "repeat_penalty"),
    # An integer beyond any float: no upper bound to catch it, and not a float to be inf.
    ("repeat_penalty huge integer", chat(repeat_penalty=10**400), "repeat_penalty"),
    ("temperature huge integer", chat(temperature=-(10**400)), "temperature"),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_chat_errors(body: bytes, param: str | None) -> None:
    error = chat_error(body)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert error.message
    decoded = json.loads(error.body())
    assert decoded == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": param,
            "code": error.code,
        }
    }


def test_n_error_is_clear() -> None:
    assert "one choice per request" in chat_error(chat(n=3)).message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (json.dumps({"model": "m"}).encode(), "prompt"),
        (completion(prompt=["a", "b"]), "prompt"),
        (completion(prompt=[1, 2, 3]), "prompt"),
        (completion(prompt=5), "prompt"),
        (completion(temperature=3), "temperature"),
        (b"{", None),
    ],
)
def test_completion_errors(body: bytes, param: str | None) -> None:
    with pytest.raises(APIError) as info:
        parse_completion(body)
    assert info.value.status == 400 and info.value.param == param


def test_api_error_from_engine_error() -> None:
    error = APIError.from_engine_error(Overloaded(retry_after=2))
    assert (error.status, error.type, error.code) == (503, "server_error", "overloaded")
    error = APIError.from_engine_error(InvalidRequest("prompt too long", code="context_length"))
    assert (error.status, error.type, error.code) == (
        400,
        "invalid_request_error",
        "context_length",
    )
    assert error.message == "prompt too long"
    assert "context_length" in repr(error)


# --- responses --------------------------------------------------------------------------

STOP = Result(FinishReason.STOP, Usage(prompt_tokens=5, completion_tokens=3))
LENGTH = Result(FinishReason.LENGTH, Usage(5, 16))
CANCELLED = Result(FinishReason.CANCELLED, Usage(5, 2))
FAILED = Result(FinishReason.ERROR, Usage(5, 2), error="decode failed")


def test_completion_id() -> None:
    assert completion_id(Kind.CHAT, bytes.fromhex("00ff10")) == "chatcmpl-00ff10"
    assert completion_id(Kind.TEXT, b"\x01") == "cmpl-01"


def test_chat_completion_body() -> None:
    body = chat_completion_body(id="chatcmpl-1", created=1700, model="m", text="Hi!", result=STOP)
    assert json.loads(body) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def test_text_completion_body() -> None:
    body = text_completion_body(id="cmpl-1", created=1, model="m", text=" upon", result=LENGTH)
    decoded = json.loads(body)
    assert decoded["object"] == "text_completion"
    assert decoded["choices"] == [
        {"text": " upon", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert decoded["usage"]["total_tokens"] == 21


@pytest.mark.parametrize("result", [CANCELLED, FAILED])
def test_bodies_refuse_unfinished_results(result: Result) -> None:
    with pytest.raises(ValueError):
        chat_completion_body(id="x", created=1, model="m", text="", result=result)


def test_error_for_result() -> None:
    assert error_for_result(STOP) is None and error_for_result(LENGTH) is None
    failed = error_for_result(FAILED)
    assert failed is not None and failed.status == 500 and failed.message == "decode failed"
    cancelled = error_for_result(CANCELLED)
    assert cancelled is not None and cancelled.code == "cancelled"


def test_models_body() -> None:
    assert json.loads(models_body(["a", "b"], created=9)) == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 9, "owned_by": "rawstream"},
            {"id": "b", "object": "model", "created": 9, "owned_by": "rawstream"},
        ],
    }


# --- the chunk encoder ------------------------------------------------------------------

TEXTS = [
    "",
    "Hello",
    " world",
    'quote " and \\ backslash',
    "line\nbreak\r\n\ttab",
    "\x00\x1f control",
    "caf\u00e9 \u65e5\u672c \U0001f600",
    "\ud800 lone surrogate",
    "\u2028\u2029",
    "</script>",
]


def reference_chunk(
    kind: Kind, text: str | None, finish: str | None, *, include_usage: bool
) -> dict[str, Any]:
    """The chunk written out by hand, as OpenAI documents it."""
    base: dict[str, Any] = {
        "id": "chatcmpl-abc" if kind is Kind.CHAT else "cmpl-abc",
        "object": "chat.completion.chunk" if kind is Kind.CHAT else "text_completion",
        "created": 1700000000,
        "model": 'smol "q4" \u00e9',
    }
    if kind is Kind.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {} if text is None else {"content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
    base["choices"] = [choice]
    if include_usage:
        base["usage"] = None
    return base


def encoder(kind: Kind, include_usage: bool = False) -> ChunkEncoder:
    return ChunkEncoder(
        kind,
        id="chatcmpl-abc" if kind is Kind.CHAT else "cmpl-abc",
        created=1700000000,
        model='smol "q4" \u00e9',
        include_usage=include_usage,
    )


def sse_of(chunk: object) -> bytes:
    return encode_event(json.dumps(chunk, separators=(",", ":")))


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("text", TEXTS)
def test_delta_is_byte_identical_to_full_json_dumps(
    kind: Kind, include_usage: bool, text: str
) -> None:
    fast = encoder(kind, include_usage).delta(text)
    slow = sse_of(reference_chunk(kind, text, None, include_usage=include_usage))
    assert fast == slow


def decode_stream(data: bytes) -> list[str]:
    return [event.data for event in SSEParser().feed(data)]


def test_chat_stream_with_usage() -> None:
    enc = encoder(Kind.CHAT, include_usage=True)
    stream = enc.start() + enc.delta("Hel") + enc.delta("lo") + enc.finish(STOP)
    events = decode_stream(stream)
    assert events[-1] == "[DONE]"
    assert stream.endswith(DONE)
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    assert all(c["usage"] is None for c in chunks[:4])
    final = chunks[3]
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = chunks[4]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert len(chunks) == 5
    assert {c["id"] for c in chunks} == {"chatcmpl-abc"}


def test_chat_stream_without_usage() -> None:
    enc = encoder(Kind.CHAT)
    events = decode_stream(enc.start() + enc.delta("x") + enc.finish(LENGTH))
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and len(chunks) == 3
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1] == reference_chunk(Kind.CHAT, None, "length", include_usage=False)


def test_text_stream() -> None:
    enc = encoder(Kind.TEXT, include_usage=True)
    assert enc.start() == b""
    events = decode_stream(enc.delta(" upon") + enc.finish(STOP))
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["text"] == " upon"
    assert chunks[1] == reference_chunk(Kind.TEXT, None, "stop", include_usage=True)
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 8


@pytest.mark.parametrize("result", [CANCELLED, FAILED])
def test_unfinished_stream_ends_with_error_event_and_no_done(result: Result) -> None:
    enc = encoder(Kind.CHAT, include_usage=True)
    stream = enc.start() + enc.delta("x") + enc.finish(result)
    events = decode_stream(stream)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert all(
        json.loads(e).get("choices", [{}])[0].get("finish_reason") is None for e in events[:-1]
    )


def test_explicit_error_ends_the_stream() -> None:
    enc = encoder(Kind.CHAT)
    shutdown = APIError(503, "server shutting down", type="server_error", code="shutdown")
    event = enc.error(shutdown)
    assert event == b"data: " + shutdown.body() + b"\n\n"
    with pytest.raises(ValueError):
        enc.delta("late")
    with pytest.raises(ValueError):
        enc.finish(STOP)
    with pytest.raises(ValueError):
        enc.error(shutdown)


def test_no_delta_after_finish() -> None:
    enc = encoder(Kind.TEXT)
    enc.finish(STOP)
    with pytest.raises(ValueError):
        enc.delta("x")
    with pytest.raises(ValueError):
        enc.start()


def test_openai_sdk_reads_the_stream() -> None:
    # The SDK's own models validate the chunks (skipped when it is not installed).
    types = pytest.importorskip("openai.types.chat")
    enc = encoder(Kind.CHAT, include_usage=True)
    events = decode_stream(enc.start() + enc.delta("Hi") + enc.finish(STOP))
    chunks = [types.ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[1].choices[0].delta.content == "Hi"
    assert chunks[2].choices[0].finish_reason == "stop"
    assert chunks[3].usage is not None and chunks[3].usage.total_tokens == 8
    body = chat_completion_body(id="chatcmpl-1", created=1, model="m", text="Hi", result=STOP)
    completion = types.ChatCompletion.model_validate_json(body)
    assert completion.choices[0].message.content == "Hi"


# --- text that is not Unicode -----------------------------------------------------------
#
# JSON may escape a lone UTF-16 surrogate ("\ud800"); json.loads decodes it, and the
# bytes ED A0 80 as well, into a str that UTF-8 refuses to encode. Such text is refused
# where it enters, naming the field, so it never reaches the engine or a log line.

LONE = "\\ud800"  # the JSON escape, written into bodies by hand

SURROGATE_CASES: list[tuple[str, bytes, str]] = [
    (
        "content, 4th message",
        chat(messages=[USER[0]] * 3 + [{"role": "user", "content": "x"}]).replace(
            b'"x"', f'"x{LONE}y"'.encode()
        ),
        "messages[3].content",
    ),
    ("content, low surrogate", chat().replace(b'"hi"', b'"hi\\udfff"'), "messages[0].content"),
    (
        "content, raw UTF-8 bytes",
        chat().replace(b'"hi"', '"h\u00e9\ud800"'.encode("utf-8", "surrogatepass")),
        "messages[0].content",
    ),
    (
        "text part",
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "ok"}] * 2}]).replace(
            b'"ok"}]', f'"{LONE}"}}]'.encode()
        ),
        "messages[0].content[1].text",
    ),
    ("stop string", chat(stop="x").replace(b'"x"', f'"{LONE}"'.encode()), "stop"),
    ("stop list", chat(stop=["a", "x"]).replace(b'"x"', f'"{LONE}"'.encode()), "stop[1]"),
    ("model", chat(model="x").replace(b'"x"', f'"m{LONE}"'.encode()), "model"),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in SURROGATE_CASES], ids=[c[0] for c in SURROGATE_CASES]
)
def test_lone_surrogates_are_refused(body: bytes, param: str) -> None:
    error = chat_error(body)
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "invalid_unicode",
        param,
    )
    assert param in error.message and "surrogate" in error.message
    assert error.message.encode()  # the message itself is encodable text
    assert json.loads(error.body())["error"]["param"] == param


def test_surrogate_error_says_where() -> None:
    error = chat_error(chat().replace(b'"hi"', b'"abc\\udc80"'))
    assert "U+DC80" in error.message and "character 3" in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (completion().replace(b'"Once"', f'"Once {LONE}"'.encode()), "prompt"),
        (completion(prompt=["x"]).replace(b'"x"', f'"{LONE}"'.encode()), "prompt"),
        (completion(stop="x").replace(b'"x"', f'"{LONE}"'.encode()), "stop"),
        (completion(model="x").replace(b'"x"', f'"{LONE}"'.encode()), "model"),
    ],
)
def test_lone_surrogates_in_completions_are_refused(body: bytes, param: str) -> None:
    with pytest.raises(APIError) as info:
        parse_completion(body)
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "invalid_unicode",
        param,
    )


def test_surrogate_role_is_not_a_role_and_its_message_encodes() -> None:
    error = chat_error(chat().replace(b'"user"', f'"user{LONE}"'.encode()))
    assert (error.param, error.code) == ("messages[0].role", "invalid_value")
    assert "\\ud800" in error.message  # shown escaped, never as the raw code point
    error.message.encode()


def test_already_decoded_json_is_checked_too() -> None:
    # The WebSocket API hands decoded JSON to chat_completion_from_json.
    obj = {"messages": [{"role": "user", "content": "\ud800"}]}
    with pytest.raises(APIError) as info:
        chat_completion_from_json(obj)
    assert (info.value.param, info.value.code) == ("messages[0].content", "invalid_unicode")
    with pytest.raises(APIError) as info:
        completion_from_json({"prompt": "\U0010ffff\udfff"})
    assert info.value.param == "prompt" and "character 1" in info.value.message


def test_surrogate_pairs_and_other_unicode_are_text() -> None:
    body = chat().replace(b'"hi"', b'"\\ud83d\\ude00 caf\\u00e9 \xe6\x97\xa5 \\u2028"')
    request = parse_chat_completion(body)
    messages = request.generation.messages
    assert messages is not None
    assert messages[0].content == "\U0001f600 caf\u00e9 \u65e5 \u2028"
    stop = parse_completion(completion(stop=["\U0001f600", "\u00e9"])).generation.stop
    assert stop == ("\U0001f600", "\u00e9")


# --- every response is ASCII bytes ------------------------------------------------------
#
# The bodies and events are written with json.dumps' default ensure_ascii, so whatever
# text they carry (a model name from a file name with undecodable bytes, generated text,
# an error message quoting the request) they are ASCII and encoding cannot fail.

AWKWARD = "caf\u00e9 \U0001f600 \ud800 \udcff \u2028 \x00"


def test_bodies_are_ascii_whatever_the_text() -> None:
    bodies = [
        chat_completion_body(id="c", created=1, model=AWKWARD, text=AWKWARD, result=STOP),
        text_completion_body(id="c", created=1, model=AWKWARD, text=AWKWARD, result=LENGTH),
        models_body([AWKWARD], created=1),
        APIError(400, AWKWARD, code=AWKWARD, param=AWKWARD).body(),
        APIError(400, AWKWARD).sse(),
    ]
    for body in bodies:
        assert body.isascii(), body
    assert json.loads(bodies[0])["choices"][0]["message"]["content"] == AWKWARD
    assert json.loads(bodies[2])["data"][0]["id"] == AWKWARD


@pytest.mark.parametrize("kind", list(Kind))
def test_stream_events_are_ascii_whatever_the_text(kind: Kind) -> None:
    enc = ChunkEncoder(kind, id="c", created=1, model=AWKWARD, include_usage=True)
    events = enc.start() + enc.delta(AWKWARD) + enc.finish(STOP)
    assert events.isascii()
    texts = [json.loads(e) for e in decode_stream(events)[:-1]]
    assert {t["model"] for t in texts} == {AWKWARD}
    failed = ChunkEncoder(kind, id="c", created=1, model=AWKWARD)
    assert (failed.delta(AWKWARD) + failed.finish(FAILED)).isascii()
