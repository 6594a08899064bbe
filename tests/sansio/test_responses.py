"""The Responses API request parser and event encoder, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from rawstream.sansio.openai import APIError
from rawstream.sansio.responses import (
    ResponseEncoder,
    ResponseObject,
    ResponsesRequest,
    message_item_id,
    parse_response_request,
    response_body,
    response_id,
    response_status,
)
from rawstream.sansio.sse import SSEParser, encode_event
from rawstream.sansio.values import ChatMessage, FinishReason, Result, Usage

STOP = Result(FinishReason.STOP, Usage(5, 3))
LENGTH = Result(FinishReason.LENGTH, Usage(5, 4))
ERROR = Result(FinishReason.ERROR, Usage(5, 1), error="decode failed")
CANCELLED = Result(FinishReason.CANCELLED, Usage(5, 2))
#: Text that needs escaping in JSON: quotes, backslashes, line breaks, non-ASCII.
TEXTS = ["", "plain", 'say "hi"\\', "two\nlines\r\n", "\u00e9\u4e2d\U0001f600", "\x00\x1f"]
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "input": "hi", **fields}).encode()


def refused(raw: bytes) -> APIError:
    with pytest.raises(APIError) as info:
        parse_response_request(raw)
    return info.value


# --- parsing ----------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    request = parse_response_request(body())
    assert request.model == "m" and not request.stream
    assert request.generation.messages == (ChatMessage("user", "hi"),)
    assert request.generation.max_tokens is None
    assert "stream" not in str(request)


def test_items_instructions_and_sampling() -> None:
    items = [
        {"role": "developer", "content": "be terse"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "b", "annotations": []}],
        },
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "c"}, {"type": "input_text", "text": "d"}],
        },
    ]
    request = parse_response_request(
        body(
            input=items,
            instructions="You are kind.",
            max_output_tokens=7,
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stream=True,
        )
    )
    g = request.generation
    assert g.messages == (
        ChatMessage("system", "You are kind."),
        ChatMessage("system", "be terse"),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c\nd"),
    )
    assert (g.max_tokens, g.temperature, g.top_p, g.top_k) == (7, 0.5, 0.9, 40)
    assert request.stream and request.instructions == "You are kind."


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"input": None}, "input", "missing_required_parameter"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": 3}, "input", "invalid_type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content", "invalid_type"),
        ({"input": [{"role": "user"}]}, "input[0].content", "invalid_type"),
        ({"input": ["hi"]}, "input[0]", "invalid_type"),
        ({"instructions": ["a"]}, "instructions", "invalid_type"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"max_output_tokens": 2.5}, "max_output_tokens", "invalid_type"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"top_p": -0.1}, "top_p", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"model": 1}, "model", "invalid_type"),
        ({"input": "\ud800"}, "input", "invalid_unicode"),
    ],
)
def test_bad_fields_are_400_naming_the_field(fields: dict[str, Any], param: str, code: str) -> None:
    error = refused(body(**fields))
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.to_json()["error"]["type"] == "invalid_request_error"


def test_item_count_is_bounded_before_items_are_read() -> None:
    items = [{"role": "user", "content": "x"}] * 3
    with pytest.raises(APIError) as info:
        parse_response_request(body(input=items), max_messages=2)
    assert info.value.code == "too_many_messages"
    assert len(parse_response_request(body(input=items), max_messages=3).generation.messages or ())


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
    ],
)
def test_unsupported_features_asked_for_are_refused(fields: dict[str, Any], param: str) -> None:
    error = refused(body(**fields))
    assert (error.status, error.param, error.code) == (400, param, "unsupported_parameter")
    assert param.split(".")[0] in error.message


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [], "tool_choice": "auto"},
        {"tool_choice": "none", "parallel_tool_calls": False},
        {"store": False, "background": False, "previous_response_id": None},
        {"reasoning": {"effort": None}, "text": {"format": {"type": "text"}}},
        {"include": [], "truncation": "disabled", "top_logprobs": 0},
        {"user": "u", "metadata": {"k": "v"}, "stream_options": {"include_obfuscation": False}},
    ],
)
def test_the_same_features_not_asked_for_are_accepted(fields: dict[str, Any]) -> None:
    assert isinstance(parse_response_request(body(**fields)), ResponsesRequest)


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        (
            {"type": "function_call_output", "call_id": "c", "output": "4"},
            "input[0].type",
            "unsupported_input",
        ),
        ({"type": "reasoning", "summary": []}, "input[0].type", "unsupported_input"),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
            "input[0].content[0].type",
            "unsupported_content",
        ),
        (
            {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]},
            "input[0].content[0].type",
            "unsupported_content",
        ),
    ],
)
def test_items_and_parts_that_are_not_text_are_refused(
    item: dict[str, Any], param: str, code: str
) -> None:
    error = refused(body(input=[item]))
    assert (error.status, error.param, error.code) == (400, param, code)


# --- the response object ----------------------------------------------------------------


def response_object(**fields: Any) -> ResponseObject:
    request = parse_response_request(body(**fields))
    return ResponseObject(id="resp_1", created_at=1700000000, model='smol "q4"', request=request)


def test_ids_have_openais_prefixes() -> None:
    assert response_id(b"\x01\xff") == "resp_01ff"
    assert message_item_id(b"\x02") == "msg_02"


def test_finish_reasons_map_to_statuses() -> None:
    assert response_status(STOP) == ("completed", None)
    assert response_status(LENGTH) == ("incomplete", {"reason": "max_output_tokens"})
    for result in (ERROR, CANCELLED):
        with pytest.raises(ValueError):
            response_status(result)


def test_whole_response_is_what_the_sdk_reads() -> None:
    raw = response_body(
        response_object(instructions="hi there", max_output_tokens=9),
        item_id="msg_1",
        text="Hello!",
        result=STOP,
        completed_at=1700000001,
    )
    data = json.loads(raw)
    parsed = Response.model_validate(data)  # every required field, the right types
    assert parsed.output_text == "Hello!"
    assert parsed.status == "completed" and parsed.incomplete_details is None
    assert parsed.id == "resp_1" and parsed.object == "response"
    assert parsed.instructions == "hi there" and parsed.max_output_tokens == 9
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (5, 3)
    assert parsed.usage.total_tokens == 8
    message = data["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"] == "msg_1" and message["status"] == "completed"
    assert message["content"] == [
        {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
    ]
    assert data["completed_at"] == 1700000001


def test_cut_at_max_output_tokens_is_incomplete() -> None:
    data = json.loads(
        response_body(response_object(), item_id="m", text="ab", result=LENGTH, completed_at=2)
    )
    assert data["status"] == "incomplete"
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["output"][0]["status"] == "incomplete"
    assert data["completed_at"] is None
    Response.model_validate(data)


def test_an_unfinished_result_has_no_body() -> None:
    with pytest.raises(ValueError):
        response_body(response_object(), item_id="m", text="", result=ERROR, completed_at=1)


# --- the stream ---------------------------------------------------------------------------


def encoder() -> ResponseEncoder:
    return ResponseEncoder(response_object(), item_id="msg_\u00e9")


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, json.loads(e.data)) for e in SSEParser().feed(data)]


@pytest.mark.parametrize("text", TEXTS)
def test_delta_is_byte_identical_to_the_slow_form(text: str) -> None:
    enc = encoder()
    enc.start()  # sequence numbers 0..3
    fast = enc.delta(text)
    slow = {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_\u00e9",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
        "logprobs": [],
    }
    assert fast == encode_event(
        json.dumps(slow, separators=(",", ":")), event="response.output_text.delta"
    )
    assert enc.delta(text).count(b'"sequence_number":5,') == 1


def test_complete_stream_in_order_with_sequence_numbers() -> None:
    enc = encoder()
    stream = enc.start() + enc.delta("Hel") + enc.delta("lo") + enc.finish(STOP, completed_at=9)
    events = events_of(stream)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["type"] for _, data in events] == [name for name, _ in events]
    assert [data["sequence_number"] for _, data in events] == list(range(10))
    for _, data in events:
        EVENTS.validate_python(data)  # each is a valid event of the SDK's union
    created, done_text, completed = events[0][1], events[6][1], events[-1][1]
    assert created["response"]["status"] == "in_progress"
    assert created["response"]["output"] == [] and created["response"]["usage"] is None
    assert done_text["text"] == "Hello"
    final = Response.model_validate(completed["response"])
    assert final.status == "completed" and final.output_text == "Hello"
    assert final.usage is not None and final.usage.output_tokens == 3
    assert enc.ended
    with pytest.raises(ValueError):
        enc.delta("more")


def test_stream_cut_at_max_output_tokens_ends_with_response_incomplete() -> None:
    enc = encoder()
    events = events_of(enc.start() + enc.delta("x") + enc.finish(LENGTH, completed_at=9))
    name, last = events[-1]
    assert name == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2][1]["item"]["status"] == "incomplete"
    assert "response.completed" not in [n for n, _ in events]


@pytest.mark.parametrize("result", [ERROR, CANCELLED], ids=["error", "cancelled"])
def test_a_generation_that_did_not_finish_ends_with_response_failed(result: Result) -> None:
    enc = encoder()
    events = events_of(enc.start() + enc.delta("part") + enc.finish(result, completed_at=9))
    name, last = events[-1]
    assert name == "response.failed" and last["sequence_number"] == 5
    assert [n for n, _ in events].count("response.failed") == 1
    assert not {"response.completed", "response.output_text.done"} & {n for n, _ in events}
    failed = Response.model_validate(last["response"])
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    assert failed.output_text == "part"  # the text so far, in an incomplete item
    assert last["response"]["output"][0]["status"] == "incomplete"


def test_fail_ends_the_stream_with_the_error_message() -> None:
    enc = encoder()
    enc.start()
    error = APIError(503, "the server is shutting down", type="server_error")
    (name, last), *_ = events_of(enc.fail(error))
    assert name == "response.failed" and last["sequence_number"] == 4
    assert last["response"]["error"] == {
        "code": "server_error",
        "message": "the server is shutting down",
    }
    with pytest.raises(ValueError):
        enc.fail(error)
    with pytest.raises(ValueError):
        enc.finish(STOP, completed_at=1)


def test_every_event_is_ascii_and_one_data_line() -> None:
    enc = ResponseEncoder(response_object(instructions="\u00e9\n"), item_id="m")
    stream = enc.start() + enc.delta("\u2028 \n \U0001f600") + enc.finish(STOP, completed_at=1)
    assert stream.isascii()
    for block in stream.split(b"\n\n")[:-1]:
        assert [line.split(b":")[0] for line in block.split(b"\n")] == [b"event", b"data"]
