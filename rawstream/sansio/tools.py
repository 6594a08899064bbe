"""Structured output and tool calls in the OpenAI chat API: requests, as pure functions.

Two jobs, no I/O (docs/structured-output.md tells the whole story; the responses
are :mod:`rawstream.sansio.tool_calls`):

- **Requests in.** :func:`parse_chat_completion` is
  :func:`rawstream.sansio.openai.parse_chat_completion` plus what it leaves out:
  ``response_format`` (:class:`~rawstream.sansio.values.JsonFormat`), ``tools``,
  ``tool_choice``, ``parallel_tool_calls``, the ``tool_calls`` of assistant messages
  and the ``tool_call_id`` of tool messages. Whatever this server cannot honour is
  an :class:`~rawstream.sansio.openai.APIError` (400), never ignored.
- **What the reply must be.** :func:`reply_kind` and :func:`output_schema` say it
  for a request: free text, a JSON object of a schema, a call of one of the tools
  (``{"name": ..., "arguments": {...}}``), the arguments of the one function the
  client named, or (``auto``) text in which the model may call tools itself. The
  engines turn that schema into a grammar (llama) or into :func:`minimal_instance`
  (the fake engine).

Validation rules (OpenAI's, where it has them):

- ``response_format`` is ``{"type": "text"}`` (no constraint), ``{"type":
  "json_object"}`` (any JSON object) or ``{"type": "json_schema", "json_schema":
  {"name", "schema", "strict", "description"}}``. ``name`` is 1 to 64 of
  ``a-z A-Z 0-9 _ -``; the schema is a JSON object whose root describes an object
  (``"type": "object"``), as OpenAI requires for structured outputs, with no
  ``minItems``, ``maxItems``, ``minLength`` or ``maxLength`` above
  :data:`MAX_REPETITIONS`. Whether the rest of the schema can be enforced is for
  the engine to say (also a 400).
- ``tools`` holds at most :data:`MAX_TOOLS` ``{"type": "function", "function":
  {"name", "description", "parameters", "strict"}}``; names as above and distinct;
  ``parameters`` an object schema (absent: no arguments).
- ``tool_choice`` is ``"none"``, ``"auto"``, ``"required"`` or ``{"type":
  "function", "function": {"name"}}`` naming one of the tools; absent, it is
  ``"auto"`` with tools and ``"none"`` without. ``"none"`` drops the tools.
- A grammar writes one call: ``parallel_tool_calls: true`` is refused with
  ``tool_choice: "required"`` and several tools. With ``auto`` the model may call
  several tools, or only one with ``parallel_tool_calls: false``.
- The deprecated ``functions`` and ``function_call`` are refused with a pointer to
  ``tools``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from rawstream.sansio.openai import (
    DEFAULT_MAX_MESSAGES,
    APIError,
    CompletionRequest,
    chat_completion_from_json,
    load_json,
)
from rawstream.sansio.values import (
    ChatMessage,
    GenerationRequest,
    JsonFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolMode,
)

__all__ = [
    "MAX_REPETITIONS",
    "MAX_TOOLS",
    "NO_PARAMETERS",
    "Reply",
    "call_id",
    "call_schema",
    "excess_count",
    "minimal_instance",
    "minimal_reply",
    "output_schema",
    "parse_chat_completion",
    "reply_kind",
    "structured_chat_completion",
]

#: Most tools one request may offer (OpenAI's limit).
MAX_TOOLS = 128
#: Names of functions and of schemas (OpenAI: "a-z, A-Z, 0-9, or contain
#: underscores and dashes, with a maximum length of 64").
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_COMPACT = (",", ":")
#: Largest ``minItems``, ``maxItems``, ``minLength`` or ``maxLength`` a schema may
#: set. A grammar writes a repetition out in full, a rule per item, so a count of
#: 10**9 would take gigabytes to convert (and the fake engine's reply as much);
#: llama.cpp's own grammar parser refuses repetitions beyond 2,000.
MAX_REPETITIONS = 1000
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
#: Parameters of a function that declares none.
NO_PARAMETERS = '{"type":"object","properties":{}}'


def _invalid(param: str, message: str, code: str | None = None) -> NoReturn:
    raise APIError(400, message, code=code, param=param)


# --- what the reply must be -------------------------------------------------------------


class Reply(enum.StrEnum):
    """What the engine's text is, for a request."""

    TEXT = "text"  #: free text (maybe JSON, by the model's choice or by json_format)
    CALL = "call"  #: ``{"name": <a tool>, "arguments": {...}}`` (``tool_choice: required``)
    ARGUMENTS = "arguments"  #: the arguments of the function ``tool_choice`` names
    #: ``tool_choice: auto``: text, in which the model may call tools the way its
    #: chat template taught it (``<tool_call>{"name", "arguments"}</tool_call>``).
    AUTO = "auto"


def reply_kind(request: GenerationRequest) -> Reply:
    """Whether ``request``'s reply is text or a tool call, and in which form."""
    mode = request.tool_choice.mode
    if mode is ToolMode.FUNCTION:
        return Reply.ARGUMENTS
    if mode is ToolMode.REQUIRED:
        return Reply.CALL
    if mode is ToolMode.AUTO and request.tools:
        return Reply.AUTO
    return Reply.TEXT


def output_schema(request: GenerationRequest) -> dict[str, Any] | None:
    """The JSON Schema the whole reply must be an instance of, or ``None`` (free text).

    A forced tool call wins over ``json_format``: the reply is then the call, as
    :class:`Reply` describes. ``json_format`` without a schema is any JSON object.
    With ``auto`` the reply is free (the model decides whether to call), so
    ``json_format`` is not enforced then.
    """
    kind = reply_kind(request)
    if kind is Reply.ARGUMENTS:
        return _parameters(_named_tool(request))
    if kind is Reply.CALL:
        return call_schema(request.tools)
    if kind is Reply.AUTO:
        return None
    if request.json_format is not None:
        if request.json_format.schema is None:
            return {"type": "object"}
        schema: dict[str, Any] = json.loads(request.json_format.schema)
        return schema
    return None


def call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """The schema of a call of one of ``tools``: ``{"name", "arguments"}``, in that
    order (so the name is known first, when streaming), no other property."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": _parameters(tool)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in tools
        ]
    }


def excess_count(schema: object) -> tuple[str, float] | None:
    """The first repetition count above :data:`MAX_REPETITIONS` in ``schema`` (the
    keyword and its value), or ``None``."""
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo += node
        elif isinstance(node, dict):
            for key in _COUNTS:
                count = node.get(key)
                if isinstance(count, int | float) and count > MAX_REPETITIONS:
                    return key, count
            todo += node.values()
    return None


def _parameters(tool: Tool) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(tool.parameters)
    return schema


def _named_tool(request: GenerationRequest) -> Tool:
    name = request.tool_choice.name
    for tool in request.tools:
        if tool.name == name:
            return tool
    raise ValueError(f"no tool named {name!r}")


def call_id(response_id: str, index: int = 0) -> str:
    """The id of call ``index`` of a response: ``call_`` and the response's random
    part (then ``_<index>`` after the first), so it is as unique as the response id."""
    random_part = response_id.rpartition("-")[2]
    return f"call_{random_part}" if index == 0 else f"call_{random_part}_{index}"


# --- the minimal instance of a schema (the fake engine's reply) ------------------------

#: Deepest nesting :func:`minimal_instance` follows (a recursive ``$ref`` that is
#: required at every level has no finite instance; it stops there with ``{}``).
_MAX_DEPTH = 32
_FORMATS = {
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "date-time": "2000-01-01T00:00:00Z",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def minimal_instance(schema: Mapping[str, Any]) -> Any:
    """A small, deterministic instance of ``schema``: what the fake engine replies.

    Objects get their required properties (in ``properties`` order), arrays their
    ``minItems`` items, strings ``"x"`` (as long as ``minLength`` asks, or a value
    of a known ``format``), numbers 0 (moved into ``minimum``/``maximum``), a
    ``const`` its value, an ``enum``, ``anyOf`` or ``oneOf`` its first choice. Local
    ``$ref`` (``#/...``) are followed. Patterns are not honoured.
    """
    return _instance(schema, schema, 0)


def _instance(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return {}
    if "$ref" in schema:
        return _instance(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _instance(schema[key][0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = _instance(part, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        names = [n for n in properties if n in required]
        names += sorted(n for n in required if n not in properties)
        return {n: _instance(properties.get(n, {}), root, depth + 1) for n in names}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = [_instance(s, root, depth + 1) for s in prefix]
        need = max(0, min(int(schema.get("minItems", 0)), MAX_REPETITIONS) - len(items))
        items += [_instance(schema.get("items", {}), root, depth + 1) for _ in range(need)]
        return items
    if kind == "string":
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        length = min(max(int(schema.get("minLength", 1)), 0), MAX_REPETITIONS)
        return "x" * min(length, int(schema.get("maxLength", length)))
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


#: Word-sized tokens of a JSON text: leading whitespace, then a word or one sign.
_FAKE_TOKENS = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def minimal_reply(request: GenerationRequest) -> tuple[str, ...] | None:
    """The reply of a model-free engine to a constrained ``request``: the
    :func:`minimal_instance` of :func:`output_schema` as JSON text, cut into
    word-sized tokens (joined, they are the text). ``None`` for free text."""
    schema = output_schema(request)
    if schema is None:
        return None
    text = json.dumps(minimal_instance(schema))
    return tuple(_FAKE_TOKENS.findall(text))


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    value: int | float = 0
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, int | float) and value < low:
        value = low
    if isinstance(high, int | float) and value > high:
        value = high
    return int(value) if integer else value


def _resolve(root: Mapping[str, Any], ref: object) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    target: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, Mapping) or part not in target:
            return {}
        target = target[part]
    return target


# --- parsing ----------------------------------------------------------------------------


def parse_chat_completion(
    body: bytes, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> CompletionRequest:
    """Parse and validate a ``POST /v1/chat/completions`` body, tools included."""
    return structured_chat_completion(load_json(body), max_messages=max_messages)


def structured_chat_completion(
    obj: object, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> CompletionRequest:
    """:func:`~rawstream.sansio.openai.chat_completion_from_json` with
    ``response_format``, tools, tool choice and tool messages."""
    request = chat_completion_from_json(obj, max_messages=max_messages)
    assert isinstance(obj, dict)  # chat_completion_from_json refuses anything else
    for old in ("functions", "function_call"):
        if obj.get(old) is not None:
            _invalid(old, f"{old} is deprecated and not supported: use tools and tool_choice")
    tools = _tools(obj.get("tools"))
    choice = _tool_choice(obj.get("tool_choice"), tools)
    choice = replace(choice, parallel=_parallel(obj.get("parallel_tool_calls"), tools, choice))
    generation = request.generation
    assert generation.messages is not None
    messages = _tool_messages(obj["messages"], generation.messages)
    generation = replace(
        generation,
        messages=messages,
        json_format=_response_format(obj.get("response_format")),
        tools=tools if choice.mode is not ToolMode.NONE else (),
        tool_choice=choice if choice.mode is not ToolMode.NONE else ToolChoice(ToolMode.NONE),
    )
    return replace(request, generation=generation)


def _object(param: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        _invalid(param, f"{param} must be an object", code="invalid_type")
    return value


def _string(param: str, value: object) -> str:
    if not isinstance(value, str):
        _invalid(param, f"{param} must be a string", code="invalid_type")
    try:
        value.encode()
    except UnicodeEncodeError:
        _invalid(
            param, f"{param} holds a lone UTF-16 surrogate: send valid text", "invalid_unicode"
        )
    return value


def _name(param: str, value: object) -> str:
    name = _string(param, value)
    if not _NAME.match(name):
        _invalid(param, f"{param} must be 1 to 64 of a-z, A-Z, 0-9, _ and -; got {name!r}")
    return name


def _schema_text(param: str, schema: object) -> str:
    """The schema as compact JSON text, once its root is checked to be an object."""
    if not isinstance(schema, dict):
        _invalid(param, f"{param} must be a JSON Schema object", code="invalid_json_schema")
    kind = schema.get("type")
    if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
        _invalid(
            param,
            f'the root of {param} must be an object schema ("type": "object"), got type {kind!r}',
            code="invalid_json_schema",
        )
    excess = excess_count(schema)
    if excess is not None:
        _invalid(
            param,
            f"{excess[0]} is {excess[1]} in {param}; this server enforces at most "
            f"{MAX_REPETITIONS}",
            code="invalid_json_schema",
        )
    try:
        return json.dumps(schema, separators=_COMPACT)
    except (ValueError, RecursionError):
        _invalid(param, f"{param} cannot be encoded as JSON", code="invalid_json_schema")


def _response_format(value: object) -> JsonFormat | None:
    if value is None:
        return None
    fields = _object("response_format", value)
    kind = fields.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat()
    if kind != "json_schema":
        _invalid(
            "response_format.type",
            f"response_format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}",
            code="invalid_value",
        )
    spec = _object("response_format.json_schema", fields.get("json_schema"))
    name = _name("response_format.json_schema.name", spec.get("name"))
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        _invalid("response_format.json_schema.strict", "strict must be a boolean", "invalid_type")
    if spec.get("description") is not None:
        _string("response_format.json_schema.description", spec["description"])
    schema = spec.get("schema")
    if schema is None:
        return JsonFormat(name=name)  # OpenAI: no schema, any JSON object
    # One param for every schema error, as for those the engine finds.
    return JsonFormat(_schema_text("response_format", schema), name=name)


def _tools(value: object) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        _invalid("tools", "tools must be a list", code="invalid_type")
    if len(value) > MAX_TOOLS:
        _invalid("tools", f"tools may hold at most {MAX_TOOLS} tools, got {len(value)}")
    tools = tuple(_tool(f"tools[{i}]", item) for i, item in enumerate(value))
    names = [tool.name for tool in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            _invalid(f"tools[{i}].function.name", f"two tools are named {name!r}")
    return tools


def _tool(where: str, item: object) -> Tool:
    fields = _object(where, item)
    if fields.get("type") != "function":
        _invalid(
            f"{where}.type",
            f"only tools of type 'function' are supported, got {fields.get('type')!r}",
            code="unsupported_tool_type",
        )
    function = _object(f"{where}.function", fields.get("function"))
    name = _name(f"{where}.function.name", function.get("name"))
    description = function.get("description")
    if description is not None:
        description = _string(f"{where}.function.description", description)
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        _invalid(f"{where}.function.strict", "strict must be a boolean", code="invalid_type")
    parameters = function.get("parameters")
    text = (
        NO_PARAMETERS
        if parameters is None
        else _schema_text(f"{where}.function.parameters", parameters)
    )
    return Tool(name, text, description or "")


def _tool_choice(value: object, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return ToolChoice(ToolMode.AUTO if tools else ToolMode.NONE)
    if isinstance(value, str):
        modes = {m.value: m for m in (ToolMode.NONE, ToolMode.AUTO, ToolMode.REQUIRED)}
        if value not in modes:
            _invalid(
                "tool_choice",
                f"tool_choice must be 'none', 'auto', 'required' or a function; got {value!r}",
                code="invalid_value",
            )
        choice = ToolChoice(modes[value])
    else:
        fields = _object("tool_choice", value)
        if fields.get("type") != "function":
            _invalid(
                "tool_choice.type",
                f"tool_choice.type must be 'function', got {fields.get('type')!r}",
                code="invalid_value",
            )
        function = _object("tool_choice.function", fields.get("function"))
        name = _string("tool_choice.function.name", function.get("name"))
        if name not in {tool.name for tool in tools}:
            _invalid(
                "tool_choice",
                f"tool_choice names the function {name!r}, which is not among the tools",
                code="unknown_tool",
            )
        choice = ToolChoice(ToolMode.FUNCTION, name)
    if choice.forced and not tools:
        _invalid("tool_choice", f"tool_choice {value!r} needs tools, and there are none")
    return choice


def _parallel(value: object, tools: tuple[Tool, ...], choice: ToolChoice) -> bool:
    if value is None:
        return True  # OpenAI's default
    if not isinstance(value, bool):
        _invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean", "invalid_type")
    if value and choice.mode is ToolMode.REQUIRED and len(tools) > 1:
        _invalid(
            "parallel_tool_calls",
            "with tool_choice 'required' this server makes exactly one call per reply: "
            "set parallel_tool_calls to false, or leave it out",
            code="unsupported_parameter",
        )
    return value


def _tool_messages(items: list[Any], messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """``messages`` with the tool fields of their JSON ``items`` (already validated
    as messages: a list of objects with a known role)."""
    out = list(messages)
    for i, (item, message) in enumerate(zip(items, messages, strict=True)):
        where = f"messages[{i}]"
        calls = item.get("tool_calls")
        call_ref = item.get("tool_call_id")
        if message.role == "assistant" and calls is not None:
            out[i] = replace(message, tool_calls=_calls(f"{where}.tool_calls", calls))
        elif calls is not None:
            _invalid(f"{where}.tool_calls", "only assistant messages carry tool_calls")
        if message.role == "tool":
            if call_ref is None:
                _invalid(
                    f"{where}.tool_call_id",
                    f"{where} is a tool message: it needs the tool_call_id it answers",
                    code="missing_required_parameter",
                )
            out[i] = replace(out[i], tool_call_id=_string(f"{where}.tool_call_id", call_ref))
    return tuple(out)


def _calls(where: str, value: object) -> tuple[ToolCall, ...]:
    if not isinstance(value, list):
        _invalid(where, f"{where} must be a list", code="invalid_type")
    calls = []
    for j, item in enumerate(value):
        at = f"{where}[{j}]"
        fields = _object(at, item)
        if fields.get("type", "function") != "function":
            _invalid(f"{at}.type", f"{at}.type must be 'function'", code="unsupported_tool_type")
        function = _object(f"{at}.function", fields.get("function"))
        calls.append(
            ToolCall(
                id=_string(f"{at}.id", fields.get("id")),
                name=_string(f"{at}.function.name", function.get("name")),
                arguments=_string(f"{at}.function.arguments", function.get("arguments", "{}")),
            )
        )
    return tuple(calls)
