"""Structured output and tool calls through the official ``openai`` SDK.

Protocol tests run on the fake engine, whose reply to a constrained request is the
minimal instance of its schema (so every field can be asserted exactly). The tests
marked ``model`` run the real bundled model, loaded once for the module: whatever
it writes, the reply parses and matches its schema, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
import pytest_asyncio

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import EngineState
from rawstream.sansio.values import ChatMessage, ToolCall, ToolMode
from tests.app.conftest import TIMEOUT, FakeAppFactory, run_app
from tests.json_schema import check

MODEL_TIMEOUT = 180.0
ASK: Any = [{"role": "user", "content": "What is the weather like in Paris today?"}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 30}},
    "required": ["zone"],
    "additionalProperties": False,
}
TIME: Any = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time", "parameters": TIME_PARAMETERS},
}
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}
PERSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
ROUND_TRIP: Any = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"city":"Paris","unit":"celsius"}',
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
]


class Person(pydantic.BaseModel):
    # Bounded, so a small model cannot run a string to max_tokens: the grammar
    # (maxLength) closes it.
    name: str = pydantic.Field(max_length=40)
    age: int


def client_for(url: str, timeout: float = TIMEOUT) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=timeout)


async def streamed_call(stream: Any) -> tuple[list[Any], list[Any]]:
    """The chunks of a streamed call, and its tool-call deltas in order."""
    chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    return chunks, deltas


def reassemble(deltas: list[Any]) -> dict[str, Any]:
    """A call from its deltas, as a client does: id, name, arguments joined."""
    first, *rest = deltas
    assert first.index == 0 and first.type == "function" and first.id.startswith("call_")
    assert first.function.arguments == ""
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments for d in rest)
    return {"id": first.id, "name": first.function.name, "arguments": json.loads(arguments)}


# --- on the fake engine: the protocol ----------------------------------------------------


async def test_a_named_function_is_called(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        reply = await client.chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id == "call_" + reply.id.removeprefix("chatcmpl-")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "x", "unit": "celsius"}
    request = running.engine.requests[-1]
    assert request.tool_choice.mode is ToolMode.FUNCTION and len(request.tools) == 2


async def test_a_named_function_is_called_streamed(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=[WEATHER],
            tool_choice=NAMED,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks, deltas = await streamed_call(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None
    assert reassemble(deltas)["arguments"] == {"city": "x", "unit": "celsius"}
    assert len(deltas) > 3  # the arguments came in fragments
    *body, usage = chunks
    assert [c.choices[0].finish_reason for c in body] == [None] * (len(body) - 1) + ["tool_calls"]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens > 3


async def test_required_calls_one_of_the_tools(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        whole = await client.chat.completions.create(
            model="m", messages=ASK, tools=[TIME, WEATHER], tool_choice="required"
        )
        stream = await client.chat.completions.create(
            model="m", messages=ASK, tools=[TIME, WEATHER], tool_choice="required", stream=True
        )
        chunks, deltas = await streamed_call(stream)
    calls = whole.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_time"
    assert json.loads(calls[0].function.arguments) == {"zone": "x"}
    assert reassemble(deltas) | {"id": ""} == {
        "id": "",
        "name": "get_time",
        "arguments": {"zone": "x"},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_call_cut_by_max_tokens_finishes_with_length(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        reply = await client.chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=3
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.arguments == '{"city'


async def test_json_schema_and_json_object(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        whole = await client.chat.completions.create(
            model="m", messages=ASK, response_format=PERSON_FORMAT
        )
        stream = await client.chat.completions.create(
            model="m", messages=ASK, response_format=PERSON_FORMAT, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        anything = await client.chat.completions.create(
            model="m", messages=ASK, response_format={"type": "json_object"}
        )
        free = await client.chat.completions.create(
            model="m", messages=ASK, response_format={"type": "text"}, max_tokens=4
        )
    assert whole.choices[0].finish_reason == "stop"
    assert json.loads(whole.choices[0].message.content or "") == {
        "name": "x",
        "age": 0,
        "colour": "red",
    }
    assert json.loads(text) == json.loads(whole.choices[0].message.content or "")
    assert anything.choices[0].message.content == "{}"
    assert len((free.choices[0].message.content or "").split()) == 4


async def test_the_sdks_parse_with_a_pydantic_model(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        reply = await client.chat.completions.parse(model="m", messages=ASK, response_format=Person)
    assert reply.choices[0].message.parsed == Person(name="x", age=0)


async def test_tool_calls_and_results_reach_the_engine(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        reply = await client.chat.completions.create(
            model="m", messages=ROUND_TRIP, tools=[WEATHER], tool_choice="none", max_tokens=5
        )
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "length"
    messages = running.engine.requests[-1].messages
    assert messages is not None
    args = '{"city":"Paris","unit":"celsius"}'
    assert messages[1] == ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", args),))
    assert messages[2] == ChatMessage("tool", "18 degrees and sunny", tool_call_id="call_1")
    assert running.engine.requests[-1].tools == ()  # "none": ignored


BAD_REQUESTS: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("unknown tool", {"tools": [WEATHER], "tool_choice": {"type": "function",
     "function": {"name": "get_time"}}}, "tool_choice", "unknown_tool"),
    ("schema not an object", {"response_format": {"type": "json_schema", "json_schema": {
     "name": "n", "schema": {"type": "array", "items": {"type": "integer"}}}}},
     "response_format", "invalid_json_schema"),
    ("schema not JSON Schema", {"response_format": {"type": "json_schema", "json_schema": {
     "name": "n", "schema": "object"}}}, "response_format", "invalid_json_schema"),
    ("unknown response_format", {"response_format": {"type": "yaml"}},
     "response_format.type", "invalid_value"),
    ("auto without tool support", {"tools": [WEATHER]}, "tool_choice", "tool_choice_unsupported"),
    ("not a function tool", {"tools": [{"type": "file_search"}]}, "tools[0].type",
     "unsupported_tool_type"),
    ("parallel calls", {"tools": [WEATHER, TIME], "tool_choice": "required",
     "parallel_tool_calls": True}, "parallel_tool_calls", "unsupported_parameter"),
    ("tool result without its call", {"messages": [{"role": "tool", "content": "18"}]},
     "messages[0].tool_call_id", "missing_required_parameter"),
    ("functions", {"functions": [WEATHER["function"]]}, "functions", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "param", "code"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_requests_are_400_in_openais_shape(
    fake_app: FakeAppFactory, fields: dict[str, Any], param: str, code: str | None
) -> None:
    async with (
        fake_app() as running,
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http,
    ):
        response = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": ASK, **fields}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            code,
        )
        assert error["message"]
        after = await http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
        assert after.status_code == 200  # and everyone else is still served
    assert running.engine.statistics().busy_slots == 0


async def test_the_sdk_raises_on_a_refused_tool_choice(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running.url) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m",
                messages=ASK,
                tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_time"}},
            )
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "tool_choice"


# --- the real model -----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model_app() -> AsyncIterator[App]:
    """The app with the bundled model, once for the module's model tests."""
    async with run_app(App(Config(port=0, access_log=False, threads=1))) as app:
        assert app.engine.state is EngineState.READY
        yield app


def model_client(app: App) -> openai.AsyncOpenAI:
    return client_for(f"http://127.0.0.1:{app.server.port}", MODEL_TIMEOUT)


model = pytest.mark.model
module_loop = pytest.mark.asyncio(loop_scope="module")


@model
@module_loop
async def test_model_json_schema_whole_and_streamed(model_app: App) -> None:
    async with model_client(model_app) as client:
        whole = await client.chat.completions.create(
            model="m", messages=ASK, response_format=PERSON_FORMAT, max_tokens=200, seed=1
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=ASK,
            response_format=PERSON_FORMAT,
            max_tokens=200,
            seed=2,
            stream=True,
        )
        chunks = [c async for c in stream]
    assert whole.choices[0].finish_reason == "stop"
    check(json.loads(whole.choices[0].message.content or ""), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"
    check(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), PERSON)


@model
@module_loop
async def test_model_parse_with_a_pydantic_model(model_app: App) -> None:
    async with model_client(model_app) as client:
        reply = await client.chat.completions.parse(
            model="m",
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format=Person,
            max_tokens=200,
            temperature=0,
        )
    assert isinstance(reply.choices[0].message.parsed, Person)


@model
@module_loop
async def test_model_calls_the_named_function_whole_and_streamed(model_app: App) -> None:
    async with model_client(model_app) as client:
        whole = await client.chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, max_tokens=100
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice=NAMED,
            max_tokens=100,
            temperature=1.0,
            seed=7,
            stream=True,
        )
        chunks, deltas = await streamed_call(stream)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    check(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    streamed = reassemble(deltas)
    assert streamed["name"] == "get_weather"
    check(streamed["arguments"], WEATHER_PARAMETERS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@model
@module_loop
async def test_model_required_with_two_tools(model_app: App) -> None:
    async with model_client(model_app) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="m",
                    messages=ASK,
                    tools=[WEATHER, TIME],
                    tool_choice="required",
                    max_tokens=100,
                    temperature=1.0,
                    seed=seed,
                )
                for seed in (1, 2, 3)
            )
        )
    for reply in replies:
        assert reply.choices[0].finish_reason == "tool_calls"
        (call,) = reply.choices[0].message.tool_calls or []
        check(json.loads(call.function.arguments), PARAMETERS[call.function.name])


@model
@module_loop
async def test_model_tool_result_round_trip(model_app: App) -> None:
    async with model_client(model_app) as client:
        first = await client.chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=100
        )
        (call,) = first.choices[0].message.tool_calls or []
        answer = await client.chat.completions.create(
            model="m",
            messages=[
                *ASK,
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
            ],
            tools=[WEATHER],
            tool_choice="none",
            max_tokens=40,
        )
    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason in ("stop", "length")


@model
@module_loop
async def test_model_refuses_what_it_cannot_enforce(model_app: App) -> None:
    async with model_client(model_app) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="m",
                messages=ASK,
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "when",
                        "schema": {"type": "object", "properties": {"at": {"type": "date"}}},
                    },
                },
            )
        assert isinstance(info.value.body, dict)
        assert (info.value.body["param"], info.value.body["code"]) == (
            "response_format",
            "invalid_json_schema",
        )
        for bad in (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            {"tools": [WEATHER]},
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n",
             "schema": {"type": "string"}}}},
            {"response_format": {"type": "yaml"}},
        ):  # fmt: skip
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="m", messages=ASK, **bad)
