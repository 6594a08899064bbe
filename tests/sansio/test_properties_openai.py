"""Properties of the OpenAI request parsing and chunk encoding (rawstream.sansio.openai).

* Any body, bytes or JSON, is either a :class:`CompletionRequest` whose text can be
  encoded, or an :class:`APIError` with a 4xx status: nothing else may escape, since
  anything else would be a ``500`` for what is the client's mistake.
* A valid body round-trips: every field the client set arrives in the request.
* A streamed chunk is exactly ``json.dumps`` of the chunk and one SSE ``data:`` line.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from rawstream.engine.base import ChatMessage
from rawstream.sansio.openai import (
    APIError,
    ChunkEncoder,
    CompletionRequest,
    Kind,
    parse_chat_completion,
    parse_completion,
)

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 2, 0.5, 1e308, -1e308, 5e-324, 2**63, 2**64]),
)
json_scalars = st.none() | st.booleans() | numbers | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "x"]) | any_text, inner,
                      max_size=4),
    max_leaves=20,
)  # fmt: skip
FIELDS = [
    "model", "messages", "prompt", "stream", "stream_options", "n", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
    "presence_penalty", "frequency_penalty", "seed", "stop", "user",
]  # fmt: skip
USER = [{"role": "user", "content": "hi"}]
PARSERS = [parse_chat_completion, parse_completion]


def strings_of(request: CompletionRequest) -> list[str]:
    generation = request.generation
    texts = [m.content for m in generation.messages or ()] + list(generation.stop)
    return texts + [t for t in (generation.prompt, request.model) if t is not None]


def parse_or_error(parse: Any, body: bytes) -> CompletionRequest | APIError:
    """The request, or the APIError; any other exception fails the test.

    An accepted request holds only text that UTF-8 can encode: a lone surrogate
    (JSON's ``"\\ud800"``) must be refused here, not fail later in the engine.
    """
    try:
        request: CompletionRequest = parse(body)
    except APIError as error:
        assert 400 <= error.status < 500, error
        sent = json.loads(error.body())
        assert set(sent["error"]) == {"message", "type", "param", "code"}
        assert error.sse().startswith(b"data: ") and error.sse().endswith(b"\n\n")
        return error
    for text in strings_of(request):
        text.encode("utf-8")
    return request


@given(st.binary(max_size=300), st.sampled_from(PARSERS))
def test_any_bytes_are_a_request_or_an_api_error(body: bytes, parse: Any) -> None:
    parse_or_error(parse, body)


@given(json_values, st.sampled_from(PARSERS))
def test_any_json_is_a_request_or_an_api_error(value: object, parse: Any) -> None:
    parse_or_error(parse, json.dumps(value).encode())


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with a few fields set to arbitrary JSON."""
    body: dict[str, Any] = {"messages": USER, "prompt": "hi"}
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4)):
        body[name] = draw(json_values)
    return body


@given(near_valid_bodies(), st.sampled_from(PARSERS))
def test_any_field_value_is_a_request_or_an_api_error(body: dict[str, Any], parse: Any) -> None:
    parse_or_error(parse, json.dumps(body).encode())


@st.composite
def bodies_with_any_code_points(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body whose strings hold any code point, lone surrogates included."""
    content = draw(any_text | st.lists(any_text, max_size=2))
    if isinstance(content, list):
        content = [{"type": "text", "text": t} for t in content]
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "prompt": draw(any_text),
    }
    if draw(st.booleans()):
        body["stop"] = draw(st.lists(any_text.filter(bool), max_size=4))
    if draw(st.booleans()):
        body["model"] = draw(any_text)
    return body


@given(bodies_with_any_code_points(), st.sampled_from(PARSERS))
@example({"messages": [{"role": "user", "content": "\ud800"}]}, parse_chat_completion)
@example({"prompt": "a\udfffb"}, parse_completion)
def test_text_is_unicode_or_refused(body: dict[str, Any], parse: Any) -> None:
    parse_or_error(parse, json.dumps(body).encode())


@given(st.sampled_from(FIELDS[6:]), numbers, st.sampled_from(PARSERS))
@example("repeat_penalty", 10**400, parse_chat_completion)  # past float: not an OverflowError
@example("temperature", -(10**400), parse_completion)
def test_any_number_in_a_numeric_field_is_a_request_or_an_api_error(
    name: str, value: int | float, parse: Any
) -> None:
    body = {"messages": USER, "prompt": "hi", name: value}
    parse_or_error(parse, json.dumps(body).encode())


@given(st.integers(1, 60_000), st.sampled_from(["[", '{"messages":']), st.sampled_from(PARSERS))
def test_deep_nesting_is_an_api_error(depth: int, opener: str, parse: Any) -> None:
    assert isinstance(parse_or_error(parse, (opener * depth).encode()), APIError)


@given(st.sampled_from(["NaN", "Infinity", "-Infinity"]), st.sampled_from(["temperature", "top_p"]))
def test_non_json_constants_are_refused(constant: str, name: str) -> None:
    body = b'{"messages":[{"role":"user","content":"x"}],"%s":%s}' % (
        name.encode(),
        constant.encode(),
    )
    assert isinstance(parse_or_error(parse_chat_completion, body), APIError)


# --- valid bodies round-trip ------------------------------------------------------------

texts = st.text(max_size=30)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}  # fmt: skip


@st.composite
def chat_messages(draw: st.DrawFn) -> tuple[dict[str, Any], ChatMessage]:
    role = draw(st.sampled_from(sorted(ROLES)))
    content = draw(st.none() | texts | st.lists(texts, max_size=3))
    if content is None:
        expected = ""
        sent: object = None
    elif isinstance(content, str):
        expected, sent = content, content
    else:
        expected = "\n".join(content)
        sent = [{"type": "text", "text": t} for t in content]
    return {"role": role, "content": sent}, ChatMessage(ROLES[role], expected)


def in_range(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high) | st.sampled_from([low, high]).filter(math.isfinite)


@st.composite
def sampling(draw: st.DrawFn) -> dict[str, Any]:
    """Valid sampling fields (each maybe absent) and their expected values."""
    choices = {
        "max_tokens": st.integers(1, 10**6),
        "temperature": in_range(0, 2),
        "top_p": in_range(0, 1),
        "top_k": st.integers(0, 1000),
        "min_p": in_range(0, 1),
        "repeat_penalty": st.floats(min_value=0, max_value=1e6, exclude_min=True),
        "presence_penalty": in_range(-2, 2),
        "frequency_penalty": in_range(-2, 2),
        "seed": st.integers(-(2**63), 2**64 - 1),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
    }
    return {name: draw(strategy) for name, strategy in choices.items() if draw(st.booleans())}


DEFAULTS = {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
            "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "seed": None, "stop": ()}  # fmt: skip


def check_sampling(request: CompletionRequest, fields: dict[str, Any]) -> None:
    generation = request.generation
    for name, default in DEFAULTS.items():
        want = fields.get(name, default)
        if name == "stop":
            want = tuple(want)
        assert getattr(generation, name) == want, name


@given(
    st.lists(chat_messages(), min_size=1, max_size=5),
    sampling(),
    st.none() | texts,
    st.sampled_from([None, False, True]),
    st.sampled_from([None, False, True]),
)
def test_a_valid_chat_body_round_trips(
    messages: list[tuple[dict[str, Any], ChatMessage]],
    fields: dict[str, Any],
    model: str | None,
    stream: bool | None,
    include_usage: bool | None,
) -> None:
    body: dict[str, Any] = {"messages": [m for m, _ in messages], **fields}
    if model is not None:
        body["model"] = model
    if stream is not None:
        body["stream"] = stream
    if stream and include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    request = parse_chat_completion(json.dumps(body).encode())
    assert request.kind is Kind.CHAT
    assert request.generation.messages == tuple(expected for _, expected in messages)
    assert request.generation.prompt is None
    assert (request.model, request.stream) == (model, bool(stream))
    assert request.include_usage == bool(stream and include_usage)
    check_sampling(request, fields)


@given(texts, sampling(), st.booleans(), st.integers(1, 10**6))
def test_a_valid_completion_body_round_trips(
    prompt: str, fields: dict[str, Any], batch_of_one: bool, newer_limit: int
) -> None:
    body: dict[str, Any] = {"prompt": [prompt] if batch_of_one else prompt, **fields}
    # max_completion_tokens, the newer name, wins over max_tokens.
    body["max_completion_tokens"] = newer_limit
    request = parse_completion(json.dumps(body).encode())
    assert request.kind is Kind.TEXT
    assert request.generation.prompt == prompt and request.generation.messages is None
    check_sampling(request, {**fields, "max_tokens": newer_limit})


# --- responses --------------------------------------------------------------------------


#: Model names as the server has them (from the model file or the fake engine).
model_names = st.from_regex(r"[\w.:/+-]{1,40}", fullmatch=True)


@given(st.sampled_from(list(Kind)), st.booleans(), model_names, any_text)
def test_a_delta_chunk_is_json_dumps_on_one_data_line(
    kind: Kind, include_usage: bool, model: str, text: str
) -> None:
    encoder = ChunkEncoder(kind, id="x-1", created=7, model=model, include_usage=include_usage)
    event = encoder.delta(text)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    line = event[len(b"data: ") : -2]
    assert b"\n" not in line and b"\r" not in line
    chunk = json.loads(line)
    expected = encoder._chunk(text, None)  # the slow, obviously right form
    assert line == json.dumps(expected, separators=(",", ":")).encode()
    assert chunk["object"] == ("chat.completion.chunk" if kind is Kind.CHAT else "text_completion")


@given(st.integers(400, 599), any_text, st.none() | any_text, st.none() | any_text)
def test_every_api_error_renders_as_json(
    status: int, message: str, code: str | None, param: str | None
) -> None:
    error = APIError(status, message, code=code, param=param)
    assert json.loads(error.body()) == error.to_json()
