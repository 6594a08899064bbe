"""The Anthropic Messages API parser, encoders and error shape, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from rawstream.engine.base import InvalidRequest, NotReady, Overloaded
from rawstream.sansio.anthropic import (
    MAX_STOP_SEQUENCES,
    OVERLOADED_STATUS,
    MessageEncoder,
    error_body,
    error_event,
    error_status,
    message_body,
    message_id,
    parse_messages_request,
    stop_reason,
)
from rawstream.sansio.auth import Authenticator
from rawstream.sansio.openai import APIError, error_for_result
from rawstream.sansio.sse import SSEParser, encode_event
from rawstream.sansio.values import ChatMessage, FinishReason, Result, Usage

STOP = Result(FinishReason.STOP, Usage(5, 3))
LENGTH = Result(FinishReason.LENGTH, Usage(5, 4))
ERROR = Result(FinishReason.ERROR, Usage(5, 1), error="decode failed")
CANCELLED = Result(FinishReason.CANCELLED, Usage(5, 2))
TEXTS = ["", "plain", 'say "hi"\\', "two\nlines\r\n", "\u00e9\u4e2d\U0001f600", "\x00\x1f"]
USER = [{"role": "user", "content": "hi"}]
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 16, "messages": USER, **fields}).encode()


def refused(raw: bytes) -> APIError:
    with pytest.raises(APIError) as info:
        parse_messages_request(raw)
    return info.value


# --- parsing ----------------------------------------------------------------------------


def test_minimal_request() -> None:
    request = parse_messages_request(body())
    assert (request.model, request.max_tokens, request.stream) == ("m", 16, False)
    assert request.generation.messages == (ChatMessage("user", "hi"),)
    assert "max_tokens=16" in str(request)


def test_system_blocks_conversation_and_sampling() -> None:
    request = parse_messages_request(
        body(
            system=[
                {"type": "text", "text": "Be kind."},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            ],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": "b"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}],
                },
            ],
            temperature=0.2,
            top_p=0.8,
            top_k=5,
            stop_sequences=["\n\nHuman:", "END"],
            stream=True,
            metadata={"user_id": "u"},
        )
    )
    g = request.generation
    assert g.messages == (
        ChatMessage("system", "Be kind.\nBe brief."),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c\nd"),
    )
    assert (g.temperature, g.top_p, g.top_k) == (0.2, 0.8, 5)
    assert g.stop == ("\n\nHuman:", "END")
    assert request.stream


def test_system_as_a_string() -> None:
    g = parse_messages_request(body(system="Be kind.")).generation
    assert g.messages is not None and g.messages[0] == ChatMessage("system", "Be kind.")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"max_tokens": None}, "max_tokens", "missing_required_parameter"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": "16"}, "max_tokens", "invalid_type"),
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": 3}, "model", "invalid_type"),
        ({"messages": None}, "messages", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content", "invalid_type"),
        ({"system": 3}, "system", "invalid_type"),
        ({"temperature": 1.5}, "temperature", "invalid_value"),
        ({"top_k": -1}, "top_k", "invalid_value"),
        ({"stop_sequences": "END"}, "stop_sequences", "invalid_type"),
        ({"stop_sequences": [" \n"]}, "stop_sequences[0]", "invalid_value"),
        ({"stop_sequences": ["a"] * (MAX_STOP_SEQUENCES + 1)}, "stop_sequences", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": "\udfff"}]},
            "messages[0].content",
            "invalid_unicode",
        ),
    ],
)
def test_bad_fields_are_400_naming_the_field(fields: dict[str, Any], param: str, code: str) -> None:
    error = refused(body(**fields))
    assert (error.status, error.param, error.code) == (400, param, code)


def test_message_count_is_bounded() -> None:
    with pytest.raises(APIError) as info:
        parse_messages_request(body(messages=USER * 3), max_messages=2)
    assert info.value.code == "too_many_messages"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        (
            {"tools": [{"name": "f", "input_schema": {"type": "object"}}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "unsupported_parameter"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1024}},
            "thinking",
            "unsupported_parameter",
        ),
        (
            {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
            "mcp_servers",
            "unsupported_parameter",
        ),
        ({"container": "c"}, "container", "unsupported_parameter"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {}}}},
            "output_config.format",
            "unsupported_parameter",
        ),
        (
            {"messages": [*USER, {"role": "assistant", "content": "The answer is"}]},
            "messages[1].role",
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
                ]
            },
            "messages[0].content[0].type",
            "unsupported_content",
        ),
    ],
)
def test_unsupported_features_asked_for_are_refused(
    fields: dict[str, Any], param: str, code: str
) -> None:
    error = refused(body(**fields))
    assert (error.status, error.param, error.code) == (400, param, code)


def test_the_same_features_not_asked_for_are_accepted() -> None:
    parse_messages_request(
        body(tools=[], tool_choice={"type": "auto"}, thinking={"type": "disabled"})
    )
    parse_messages_request(body(tool_choice={"type": "none"}, service_tier="auto"))
    parse_messages_request(body(output_config={"effort": "low", "format": None}))


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (APIError(400, "bad"), 400, "invalid_request_error"),
        (APIError(404, "where"), 404, "not_found_error"),
        (
            APIError.from_engine_error(InvalidRequest("too long", code="x")),
            400,
            "invalid_request_error",
        ),
        (APIError.from_engine_error(Overloaded(2.0)), OVERLOADED_STATUS, "overloaded_error"),
        (APIError.from_engine_error(NotReady("loading")), 503, "overloaded_error"),
        (APIError(500, "boom", type="server_error"), 500, "api_error"),
    ],
)
def test_errors_in_anthropics_shape_and_status(error: APIError, status: int, kind: str) -> None:
    assert error_status(error) == status
    assert json.loads(error_body(error)) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
    }


def test_error_event_is_named_error() -> None:
    (event,) = SSEParser().feed(error_event(APIError(503, "going away", type="server_error")))
    assert event.event == "error"
    assert json.loads(event.data)["error"] == {"type": "overloaded_error", "message": "going away"}


def test_x_api_key_is_a_key() -> None:
    auth = Authenticator(["k1"])
    identity = auth.authenticate([(b"x-api-key", b"k1")])
    assert identity is not None and identity.tenant == "key-0"
    assert auth.authenticate([(b"x-api-key", b"k2")]) is None
    assert auth.authenticate([(b"x-api-key", b"")]) is None


# --- answers ----------------------------------------------------------------------------


def test_stop_reasons() -> None:
    assert stop_reason(STOP, max_tokens=16) == ("end_turn", None)
    assert stop_reason(STOP, max_tokens=16, stop_sequence="END") == ("stop_sequence", "END")
    assert stop_reason(LENGTH, max_tokens=4) == ("max_tokens", None)
    # The stream's context filled before max_tokens were generated.
    assert stop_reason(LENGTH, max_tokens=100) == ("model_context_window_exceeded", None)
    for result in (ERROR, CANCELLED):
        with pytest.raises(ValueError):
            stop_reason(result, max_tokens=1)
        assert error_for_result(result) is not None


def test_whole_message_is_what_the_sdk_reads() -> None:
    data = json.loads(message_body(id="msg_1", model="m", text="Hi!", result=LENGTH, max_tokens=4))
    message = Message.model_validate(data)
    assert message.id == "msg_1" and message.role == "assistant" and message.type == "message"
    assert [(b.type, b.text) for b in message.content if b.type == "text"] == [("text", "Hi!")]
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    assert message_id(b"\xab") == "msg_ab"


def encoder() -> MessageEncoder:
    return MessageEncoder(id="msg_1", model='smol "q4" \u00e9', input_tokens=5)


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, json.loads(e.data)) for e in SSEParser().feed(data)]


@pytest.mark.parametrize("text", TEXTS)
def test_delta_is_byte_identical_to_the_slow_form(text: str) -> None:
    slow = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    expected = encode_event(json.dumps(slow, separators=(",", ":")), event="content_block_delta")
    assert encoder().delta(text) == expected


def test_complete_stream_in_order() -> None:
    enc = encoder()
    events = events_of(
        enc.start() + enc.delta("Hel") + enc.delta("lo") + enc.finish(STOP, max_tokens=16)
    )
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [data["type"] for _, data in events] == [name for name, _ in events]
    for name, data in events:
        if name != "ping":  # not in the SDK's union of events: the SDK skips it
            EVENTS.validate_python(data)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"] == {"input_tokens": 5, "output_tokens": 0}
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    delta = events[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 5, "output_tokens": 3}
    with pytest.raises(ValueError):
        enc.delta("more")


def test_a_matched_stop_sequence_is_reported_when_known() -> None:
    enc = encoder()
    events = events_of(enc.start() + enc.finish(STOP, max_tokens=16, stop_sequence="END"))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_cut_at_max_tokens() -> None:
    enc = encoder()
    events = events_of(enc.start() + enc.delta("a") + enc.finish(LENGTH, max_tokens=4))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-1][0] == "message_stop"


@pytest.mark.parametrize(
    ("result", "kind"),
    [(ERROR, "api_error"), (CANCELLED, "overloaded_error")],
    ids=["error", "cancelled"],
)
def test_a_generation_that_did_not_finish_ends_with_an_error_event(
    result: Result, kind: str
) -> None:
    enc = encoder()
    events = events_of(enc.start() + enc.delta("part") + enc.finish(result, max_tokens=16))
    names = [name for name, _ in events]
    assert names[-1] == "error" and "message_stop" not in names and "message_delta" not in names
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == kind
    with pytest.raises(ValueError):
        enc.error(APIError(500, "again"))


def test_every_event_is_ascii_and_one_data_line() -> None:
    enc = encoder()
    stream = enc.start() + enc.delta("\u2028 \n \U0001f600") + enc.finish(STOP, max_tokens=16)
    assert stream.isascii()
    for block in stream.split(b"\n\n")[:-1]:
        assert [line.split(b":")[0] for line in block.split(b"\n")] == [b"event", b"data"]
