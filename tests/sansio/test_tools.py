"""Structured output and tool calls in the OpenAI API, without sockets or a model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawstream.sansio.openai import DONE, APIError, ChunkEncoder, Kind, chat_completion_body
from rawstream.sansio.sse import SSEParser
from rawstream.sansio.tool_calls import (
    AutoDecoder,
    CallArguments,
    CallDecoder,
    CallStart,
    Content,
    ToolCallChunkEncoder,
    body_of,
    chunk_encoder,
    decode_reply,
    tool_call_body,
)
from rawstream.sansio.tools import (
    Reply,
    call_id,
    call_schema,
    minimal_instance,
    minimal_reply,
    output_schema,
    parse_chat_completion,
    reply_kind,
    structured_chat_completion,
)
from rawstream.sansio.values import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    JsonFormat,
    Result,
    Tool,
    ToolCall,
    ToolChoice,
    ToolMode,
    Usage,
)
from tests import json_schema

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
STOP = Result(FinishReason.STOP, Usage(5, 3))
LENGTH = Result(FinishReason.LENGTH, Usage(5, 3))


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


def parse(**fields: Any) -> GenerationRequest:
    return parse_chat_completion(chat(**fields)).generation


def error(**fields: Any) -> APIError:
    with pytest.raises(APIError) as info:
        parse_chat_completion(chat(**fields))
    assert info.value.status == 400
    return info.value


def test_the_schema_validator_of_these_tests() -> None:
    json_schema.self_test()


# --- response_format ----------------------------------------------------------------------


def test_response_format_text_and_absent_are_free_text() -> None:
    assert parse().json_format is None
    assert parse(response_format={"type": "text"}).json_format is None
    assert output_schema(parse(response_format={"type": "text"})) is None


def test_json_object_is_any_object() -> None:
    request = parse(response_format={"type": "json_object"})
    assert request.json_format == JsonFormat()
    assert output_schema(request) == {"type": "object"}
    assert reply_kind(request) is Reply.TEXT


def test_json_schema_is_kept_as_compact_json() -> None:
    spec = {"name": "person", "schema": PERSON, "strict": True, "description": "A person"}
    request = parse(response_format={"type": "json_schema", "json_schema": spec})
    assert request.json_format == JsonFormat(json.dumps(PERSON, separators=(",", ":")), "person")
    assert output_schema(request) == PERSON


def test_json_schema_without_a_schema_is_any_object() -> None:
    request = parse(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert output_schema(request) == {"type": "object"}


@pytest.mark.parametrize(
    ("response_format", "param", "code"),
    [
        ({"type": "xml"}, "response_format.type", "invalid_value"),
        ({}, "response_format.type", "invalid_value"),
        ("json_object", "response_format", "invalid_type"),
        ({"type": "json_schema"}, "response_format.json_schema", "invalid_type"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}},
         "response_format.json_schema.name", "invalid_type"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}},
         "response_format.json_schema.name", None),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": PERSON, "strict": 1}},
         "response_format.json_schema.strict", "invalid_type"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string"}}},
         "response_format", "invalid_json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": [PERSON]}},
         "response_format", "invalid_json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"anyOf": [PERSON]}}},
         "response_format", "invalid_json_schema"),
    ],
)  # fmt: skip
def test_bad_response_formats(response_format: Any, param: str, code: str | None) -> None:
    refused = error(response_format=response_format)
    assert (refused.param, refused.code, refused.type) == (param, code, "invalid_request_error")
    assert json.loads(refused.body())["error"]["param"] == param


# --- tools and tool_choice ----------------------------------------------------------------


def test_tools_with_a_named_function() -> None:
    request = parse(
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert [tool.name for tool in request.tools] == ["get_weather", "get_time"]
    assert request.tools[0] == Tool(
        "get_weather",
        json.dumps(WEATHER_PARAMETERS, separators=(",", ":")),
        "The weather in a city",
    )
    assert request.tool_choice == ToolChoice(ToolMode.FUNCTION, "get_time")
    assert reply_kind(request) is Reply.ARGUMENTS
    assert output_schema(request) == TIME["function"]["parameters"]  # type: ignore[index]


def test_tool_choice_defaults_to_auto_with_tools_and_none_without() -> None:
    assert parse(tools=[WEATHER]).tool_choice.mode is ToolMode.AUTO
    assert parse().tool_choice.mode is ToolMode.NONE
    assert parse(tools=[]).tool_choice.mode is ToolMode.NONE


def test_tool_choice_none_drops_the_tools() -> None:
    request = parse(tools=[WEATHER], tool_choice="none", response_format={"type": "json_object"})
    assert request.tools == () and request.tool_choice.mode is ToolMode.NONE
    assert output_schema(request) == {"type": "object"}  # the reply is JSON, not a call


def test_required_is_a_call_of_one_of_the_tools() -> None:
    request = parse(tools=[WEATHER, TIME], tool_choice="required")
    assert reply_kind(request) is Reply.CALL
    schema = output_schema(request)
    assert schema == call_schema(request.tools)
    json_schema.check({"name": "get_time", "arguments": {"zone": "UTC"}}, schema or {})
    assert json_schema.errors({"name": "get_time", "arguments": {"city": "x"}}, schema or {})
    assert json_schema.errors({"name": "nope", "arguments": {}}, schema or {})


def test_a_forced_call_wins_over_response_format() -> None:
    request = parse(
        tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}
    )
    assert reply_kind(request) is Reply.CALL


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    request = parse(tools=[tool], tool_choice="required")
    assert json.loads(request.tools[0].parameters) == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": {"a": 1}}, "tools", "invalid_type"),
        ({"tools": [WEATHER] * 129}, "tools", None),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "unsupported_tool_type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "invalid_type"),
        ({"tools": [{"type": "function", "function": {"name": "a.b"}}]},
         "tools[0].function.name", None),
        ({"tools": [{"type": "function",
                     "function": {"name": "f", "parameters": {"type": "array"}}}]},
         "tools[0].function.parameters", "invalid_json_schema"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", None),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice", "unknown_tool"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "invalid_value"),
        ({"tools": [WEATHER], "tool_choice": {"type": "code"}}, "tool_choice.type",
         "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", None),
        ({"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": True},
         "parallel_tool_calls", "unsupported_parameter"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
        ({"functions": [WEATHER["function"]]}, "functions", None),
        ({"function_call": "auto"}, "function_call", None),
    ],
)  # fmt: skip
def test_bad_tools(fields: dict[str, Any], param: str, code: str | None) -> None:
    refused = error(**fields)
    assert (refused.param, refused.code) == (param, code)


def test_parallel_calls_are_refused_only_where_a_grammar_writes_one() -> None:
    one = parse(tools=[WEATHER], tool_choice="required", parallel_tool_calls=True)
    named = parse(
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=True,
    )
    off = parse(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    assert one.tools and named.tools and off.tools and not off.tool_choice.parallel
    auto = parse(tools=[WEATHER, TIME], parallel_tool_calls=True)
    assert reply_kind(auto) is Reply.AUTO and auto.tool_choice.parallel
    assert not parse(tools=[WEATHER, TIME], parallel_tool_calls=False).tool_choice.parallel
    assert parse(tools=[WEATHER]).tool_choice.parallel  # OpenAI's default


# --- tool messages -------------------------------------------------------------------------

ROUND_TRIP = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
]


def test_tool_calls_and_results_reach_the_engine() -> None:
    request = parse(messages=ROUND_TRIP, tools=[WEATHER])
    assert request.messages == (
        ChatMessage("user", USER[0]["content"]),
        ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)),
        ChatMessage("tool", "18 degrees, sunny", tool_call_id="call_1"),
    )


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "content": "18"}], "messages[0].tool_call_id"),
        ([{"role": "tool", "content": "18", "tool_call_id": 1}], "messages[0].tool_call_id"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "assistant", "tool_calls": {}}], "messages[0].tool_calls"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}],
         "messages[0].tool_calls[0].id"),
        ([{"role": "assistant", "tool_calls": [{"id": "c", "type": "x", "function": {}}]}],
         "messages[0].tool_calls[0].type"),
        ([{"role": "assistant",
           "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}],
         "messages[0].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_bad_tool_messages(messages: list[Any], param: str) -> None:
    assert error(messages=messages).param == param


def test_the_openai_fields_are_still_checked_first() -> None:
    assert error(messages=[]).param == "messages"
    with pytest.raises(APIError, match="could not parse"):
        parse_chat_completion(b'{"messages": NaN}')
    with pytest.raises(APIError):
        structured_chat_completion([])


# --- minimal instances (the fake engine's replies) -----------------------------------------

INSTANCE_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"type": "object"}, {}),
    (PERSON, {"name": "x", "age": 0}),
    (WEATHER_PARAMETERS, {"city": "x", "unit": "celsius"}),
    ({"type": "string", "minLength": 3}, "xxx"),
    ({"type": "string", "maxLength": 0}, ""),
    ({"type": "string", "format": "date"}, "2000-01-01"),
    ({"type": "integer", "minimum": 5}, 5),
    ({"type": "number", "maximum": -1.5}, -1.5),
    ({"type": ["null", "boolean"]}, False),
    ({"type": "null"}, None),
    ({"const": [1, 2]}, [1, 2]),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [0, 0]),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}]}, ["x", False]),
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 0),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"const": 1}}, "required": ["b"]}]},
     {"a": 0, "b": 1}),
    ({"type": "object", "properties": {"p": {"$ref": "#/$defs/point"}}, "required": ["p"],
      "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}},
                          "required": ["x"]}}},
     {"p": {"x": 0}}),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "instance"), INSTANCE_CASES)
def test_minimal_instance(schema: dict[str, Any], instance: Any) -> None:
    assert minimal_instance(schema) == instance
    json_schema.check(instance, schema)


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
            "type": "object", "properties": {"a": {"type": "array", "minItems": 10**9}}}}}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "maxLength": 1001}}}}}]},
    ],
)  # fmt: skip
def test_repetitions_beyond_the_bound_are_refused(fields: dict[str, Any]) -> None:
    # A grammar (and the fake engine's reply) writes them out in full.
    refused = error(**fields)
    assert refused.code == "invalid_json_schema" and "at most 1000" in refused.message
    assert refused.param in ("response_format", "tools[0].function.parameters")


def test_minimal_instance_stays_small_whatever_the_counts() -> None:
    huge = {"type": "array", "items": {"type": "string", "minLength": 10**9}, "minItems": 10**9}
    value = minimal_instance(huge)
    assert len(value) == 1000 and len(value[0]) == 1000


def test_minimal_instance_of_a_recursive_schema_ends() -> None:
    tree = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}},
        "required": ["child"],
    }
    value = minimal_instance(tree)
    depth = 0
    while value:
        value, depth = value["child"], depth + 1
    assert 10 < depth < 100


def test_minimal_reply_is_the_instance_in_word_sized_tokens() -> None:
    request = parse(tools=[WEATHER, TIME], tool_choice="required")
    tokens = minimal_reply(request)
    assert tokens is not None and len(tokens) > 10
    assert json.loads("".join(tokens)) == {
        "name": "get_weather",
        "arguments": {"city": "x", "unit": "celsius"},
    }
    assert all(token.strip() for token in tokens)
    assert minimal_reply(parse()) is None


# --- decoding a call as it streams ---------------------------------------------------------

CALL_TEXT = '{ "name" : "get_weather",\n "arguments": {"city": "Paris }", "unit": "celsius"} } '
ARGUMENTS = '{"city": "Paris }", "unit": "celsius"}'


def feed_in_pieces(decoder: CallDecoder, text: str, cuts: list[int]) -> list[Any]:
    events: list[Any] = []
    last = 0
    for cut in sorted(set(cuts)):
        events += decoder.feed(text[last:cut])
        last = cut
    return events + decoder.feed(text[last:]) + decoder.finish()


@given(st.lists(st.integers(0, len(CALL_TEXT)), max_size=12))
def test_a_call_decodes_the_same_however_it_is_cut(cuts: list[int]) -> None:
    events = feed_in_pieces(CallDecoder(Reply.CALL), CALL_TEXT, cuts)
    assert events[0] == CallStart("get_weather")
    assert all(isinstance(e, CallArguments) and e.text and e.index == 0 for e in events[1:])
    assert "".join(e.text for e in events[1:]) == ARGUMENTS


@given(st.lists(st.integers(0, len(ARGUMENTS) + 2), max_size=12))
def test_arguments_decode_the_same_however_they_are_cut(cuts: list[int]) -> None:
    events = feed_in_pieces(CallDecoder(Reply.ARGUMENTS, "get_weather"), f" {ARGUMENTS}\n", cuts)
    assert events[0] == CallStart("get_weather")
    assert "".join(e.text for e in events[1:]) == ARGUMENTS


def test_the_name_is_given_once_it_is_whole() -> None:
    decoder = CallDecoder(Reply.CALL)
    assert decoder.feed('{"name": "get_wea') == []
    assert decoder.feed('ther", "argu') == []
    assert decoder.feed('ments": ') == [CallStart("get_weather")]
    assert decoder.feed("{") == [CallArguments("{")]
    assert decoder.feed("}") == []  # it could be the call's own brace
    assert decoder.feed("}") == [CallArguments("}")]
    assert decoder.finish() == []


def forced(choice: Any = "required") -> GenerationRequest:
    return parse(tools=[WEATHER, TIME], tool_choice=choice)


NAMED_TIME = {"type": "function", "function": {"name": "get_time"}}


def test_a_name_with_escapes() -> None:
    tool = {"type": "function", "function": {"name": "abc"}}
    request = parse(tools=[tool], tool_choice="required")
    text = '{"name":"a\\u0062c","arguments":{}}'
    assert decode_reply(request, text) == ("", [ToolCall("", "abc", "{}")])


def test_a_call_cut_before_its_name_is_no_call() -> None:
    assert decode_reply(forced(), '{"name": "get_w') == ("", [])
    assert decode_reply(forced(NAMED_TIME), "  ") == ("", [])
    assert decode_reply(forced(NAMED_TIME), '{"a": ') == ("", [ToolCall("", "get_time", '{"a":')])


def test_text_has_no_call_to_decode() -> None:
    with pytest.raises(ValueError):
        CallDecoder(Reply.TEXT)
    with pytest.raises(ValueError):
        CallDecoder(Reply.AUTO)


# --- auto: calls the model writes itself ------------------------------------------------

HERMES = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "parameters": {"zone": "CET"}}\n</tool_call>'
)


def auto() -> GenerationRequest:
    return parse(tools=[WEATHER, TIME])


@given(st.lists(st.integers(0, len(HERMES)), max_size=12))
def test_auto_finds_the_calls_however_they_are_cut(cuts: list[int]) -> None:
    events = feed_in_pieces(AutoDecoder(auto().tools), HERMES, cuts)
    assert events == [
        CallStart("get_weather", 0),
        CallArguments('{"city": "Paris"}', 0),
        CallStart("get_time", 1),
        CallArguments('{"zone": "CET"}', 1),
    ]


@given(st.lists(st.integers(0, 40), max_size=8))
def test_auto_text_streams_as_content(cuts: list[int]) -> None:
    text = "It is sunny in <Paris> <tool and warm"
    events = feed_in_pieces(AutoDecoder(auto().tools), text, cuts)
    assert all(isinstance(e, Content) and e.text for e in events)
    assert "".join(e.text for e in events) == text


def test_auto_holds_back_only_what_may_be_a_tag() -> None:
    decoder = AutoDecoder(auto().tools)
    assert decoder.feed("Let me check. <tool") == [Content("Let me check. ")]
    assert decoder.feed("_ca") == []
    assert decoder.feed('ll>{"name": "get_time", "arguments": {}}') == []
    assert decoder.finish() == [CallStart("get_time"), CallArguments("{}")]
    assert decoder.calls == 1


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_time", "arguments": 3}</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> and some text',
    ],
)
def test_auto_blocks_that_are_no_call_stay_text(text: str) -> None:
    assert decode_reply(auto(), text) == (text, [])


def test_auto_with_parallel_calls_off_keeps_the_first() -> None:
    request = parse(tools=[WEATHER, TIME], parallel_tool_calls=False)
    content, calls = decode_reply(request, HERMES)
    assert content == "" and [c.name for c in calls] == ["get_weather"]


def test_auto_last_call_may_lack_its_closing_tag() -> None:
    text = 'Sure.\n<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}'
    assert decode_reply(auto(), text) == (
        "Sure.\n",
        [ToolCall("", "get_time", '{"zone": "UTC"}')],
    )


def test_auto_bodies_and_streams() -> None:
    body = json.loads(
        tool_call_body(id="chatcmpl-ab", created=1, model="m", text=HERMES, result=STOP,
                       request=auto())
    )  # fmt: skip
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["id"] for c in message["tool_calls"]] == ["call_ab", "call_ab_1"]
    text = json.loads(
        tool_call_body(id="c-1", created=1, model="m", text="Hi", result=STOP, request=auto())
    )
    assert text["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
    assert text["choices"][0]["finish_reason"] == "stop"
    encoder = ToolCallChunkEncoder(auto(), id="chatcmpl-ab", created=1, model="m")
    data = encoder.start() + encoder.delta("Checking. ") + encoder.delta(HERMES)
    chunks = events_of(data + encoder.finish(STOP))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Checking. "}
    assert [d["tool_calls"][0]["index"] for d in deltas[2:6]] == [0, 0, 1, 1]
    assert deltas[4]["tool_calls"][0]["id"] == "call_ab_1"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --- writing the responses ----------------------------------------------------------------


def test_call_id_takes_the_response_ids_random_part() -> None:
    assert call_id("chatcmpl-5f0c9a") == "call_5f0c9a"
    assert call_id("chatcmpl-5f0c9a", 2) == "call_5f0c9a_2"


def test_whole_body_of_a_call() -> None:
    body = json.loads(
        tool_call_body(
            id="chatcmpl-ab", created=7, model="m", text=CALL_TEXT, result=STOP, request=forced()
        )
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_ab",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ARGUMENTS},
            }
        ],
    }
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_whole_body_of_a_call_cut_by_max_tokens() -> None:
    named = forced({"type": "function", "function": {"name": "get_time"}})
    body = json.loads(
        tool_call_body(id="x-1", created=1, model="m", text='{"zo', result=LENGTH, request=named)
    )
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": '{"zo',
    }


def test_the_sdk_reads_the_whole_body() -> None:
    types = pytest.importorskip("openai.types.chat")
    body = tool_call_body(
        id="chatcmpl-1", created=1, model="m", text=CALL_TEXT, result=STOP, request=forced()
    )
    message = types.ChatCompletion.model_validate_json(body).choices[0].message
    assert message.content is None and message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments)["city"] == "Paris }"


def events_of(data: bytes) -> list[Any]:
    events = [event.data for event in SSEParser().feed(data)]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streamed_call_is_openais_shape() -> None:
    encoder = ToolCallChunkEncoder(forced(), id="chatcmpl-ab", created=7, model="m")
    pieces = [encoder.start()]
    pieces += [encoder.delta(CALL_TEXT[i : i + 5]) for i in range(0, len(CALL_TEXT), 5)]
    data = b"".join(pieces) + encoder.finish(STOP)
    assert data.endswith(DONE)
    chunks = events_of(data)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_ab",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1]]
    assert all(d["tool_calls"][0] == {"index": 0, "function": {"arguments": f}}
               for d, f in zip(deltas[2:-1], fragments, strict=True))  # fmt: skip
    assert "".join(fragments) == ARGUMENTS
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-ab" for c in chunks)


def test_streamed_call_holds_back_until_the_name_is_whole() -> None:
    encoder = ToolCallChunkEncoder(forced(), id="chatcmpl-1", created=1, model="m")
    encoder.start()
    assert encoder.delta('{"name": "get_', ()) == b""
    assert b'"name":"get_weather"' in encoder.delta('weather", "arguments": {')


def test_streamed_call_with_usage_and_the_sdk_reads_it() -> None:
    types = pytest.importorskip("openai.types.chat")
    named = forced({"type": "function", "function": {"name": "get_weather"}})
    encoder = ToolCallChunkEncoder(named, id="chatcmpl-1", created=1, model="m", include_usage=True)
    data = encoder.start() + encoder.delta(ARGUMENTS[:9]) + encoder.delta(ARGUMENTS[9:])
    chunks = [
        types.ChatCompletionChunk.model_validate(c) for c in events_of(data + encoder.finish(STOP))
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    calls = [c.choices[0].delta.tool_calls for c in chunks[1:-2]]
    assert calls[0] and calls[0][0].function and calls[0][0].function.name == "get_weather"
    text = "".join(c[0].function.arguments or "" for c in calls if c and c[0].function)
    assert text == ARGUMENTS


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.ERROR])
def test_a_streamed_call_that_did_not_finish_ends_with_an_error(reason: FinishReason) -> None:
    encoder = ToolCallChunkEncoder(forced(), id="chatcmpl-1", created=1, model="m")
    end = encoder.finish(Result(reason, Usage(1, 1), error="boom"))
    assert end.startswith(b'data: {"error"') and DONE not in end
    with pytest.raises(ValueError):
        encoder.delta("x")


def test_streamed_call_cut_before_its_name_finishes_with_length() -> None:
    encoder = ToolCallChunkEncoder(forced(), id="chatcmpl-1", created=1, model="m")
    data = encoder.start() + encoder.delta('{"na') + encoder.finish(LENGTH)
    chunks = events_of(data)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]


def test_plain_requests_keep_the_plain_encoders() -> None:
    plain = parse_chat_completion(chat(response_format={"type": "json_object"}))
    assert body_of(plain.generation, chat_completion_body) is chat_completion_body
    assert isinstance(chunk_encoder(plain, id="c-1", created=1, model="m"), ChunkEncoder)
    call = parse_chat_completion(chat(tools=[WEATHER], tool_choice="required"))
    assert isinstance(chunk_encoder(call, id="c-1", created=1, model="m"), ToolCallChunkEncoder)
    writer = body_of(call.generation, chat_completion_body)
    body = json.loads(writer(id="c-1", created=1, model="m", text=CALL_TEXT, result=STOP,
                             logprobs=None))  # fmt: skip
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert chunk_encoder(plain, id="c-1", created=1, model="m").kind is Kind.CHAT


# --- any JSON: parsed, or refused with a 400 ------------------------------------------

LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
)
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
NAMES = st.sampled_from(["get_weather", "get_time", "", "a b", None, 3])
FUNCTION = st.fixed_dictionaries(
    {},
    optional={
        "name": NAMES,
        "description": JSON,
        "parameters": st.sampled_from([WEATHER_PARAMETERS, {"type": "object"}]) | JSON,
        "strict": JSON,
        "arguments": JSON,
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "x"]) | JSON, "function": FUNCTION | JSON}
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
    optional={
        "content": st.none() | st.text(max_size=5),
        "tool_calls": st.lists(
            st.fixed_dictionaries({"id": JSON, "type": JSON, "function": FUNCTION}), max_size=2
        )
        | JSON,
        "tool_call_id": st.text(max_size=3) | JSON,
    },
)
FIELDS = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional={
        "tools": st.lists(TOOL, max_size=3) | JSON,
        "tool_choice": st.sampled_from(["none", "auto", "required"]) | TOOL | JSON,
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema"]) | JSON},
            optional={
                "json_schema": st.fixed_dictionaries(
                    {},
                    optional={
                        "name": NAMES,
                        "schema": st.sampled_from([PERSON]) | JSON,
                        "strict": JSON,
                    },
                )
            },
        )
        | JSON,
        "parallel_tool_calls": JSON,
    },
)


@given(FIELDS)
def test_any_json_is_parsed_or_refused_with_a_400(fields: dict[str, Any]) -> None:
    try:
        request = structured_chat_completion(fields).generation
    except APIError as refused:
        assert refused.status == 400 and refused.param
        return
    # What was accepted is coherent: a forced call names offered tools, schemas load.
    if request.tool_choice.forced:
        assert request.tools
    schema = output_schema(request)
    assert schema is None or isinstance(schema, dict)
    json.dumps(minimal_instance(schema or {}))
