"""The OpenAI Responses API (``POST /v1/responses``), as values and pure functions.

The Responses API is OpenAI's successor of chat completions: the request carries an
``input`` (a string, or a list of message items) and optional ``instructions``; the
answer is a ``response`` object whose ``output`` holds items, here always one
assistant ``message`` with one ``output_text`` part. Two directions, no I/O:

- **Requests in.** :func:`parse_response_request` validates the body and returns a
  :class:`ResponsesRequest`: the engine's
  :class:`~rawstream.sansio.values.GenerationRequest` plus what the response echoes.
  Errors raise :class:`~rawstream.sansio.openai.APIError`, rendered in OpenAI's
  ``{"error": {...}}`` shape, exactly as for chat completions.
- **Responses out.** :func:`response_body` writes the non-streaming ``response``;
  :class:`ResponseEncoder` writes a stream as named SSE events.

Request rules (OpenAI's, checked the way :mod:`rawstream.sansio.openai` checks chat):

- ``input`` is required: a string (one user message) or a non-empty list of message
  items ``{"role", "content"}`` (``"type": "message"`` optional). Roles: user,
  assistant, system, developer (mapped to system). ``content`` is a string or a list
  of ``input_text``/``output_text`` parts, joined with LF. At most ``--max-messages``
  items. ``instructions`` (a string) becomes a system message before them.
- ``max_output_tokens`` at least 1 (OpenAI asks for 16; a local model is often asked
  for fewer), ``temperature`` 0..2, ``top_p`` 0..1, ``stream``; and the extensions
  rawstream accepts everywhere: ``top_k``, ``min_p``, ``repeat_penalty``.
- What this server cannot do is refused with ``400`` and ``code:
  "unsupported_parameter"`` (or ``"unsupported_input"`` / ``"unsupported_content"``
  for an item or a part) when a request asks for it, never silently ignored: tools
  and a ``tool_choice`` that needs them, stored state (``previous_response_id``,
  ``conversation``, ``store: true``, ``background: true``, ``prompt`` templates),
  ``reasoning``, structured output (a ``text.format`` other than ``text``),
  ``top_logprobs``, ``include``, ``truncation: "auto"``, and input items or parts
  that are not text (function calls and their outputs, images, files, audio).
- Other fields (``user``, ``metadata``, ``service_tier``, ``stream_options``...)
  change nothing that this server does, and are ignored.

Finish reasons map to a response's ``status`` in one place,
:func:`response_status`: ``stop`` is ``completed``; ``length`` is ``incomplete``
with ``incomplete_details: {"reason": "max_output_tokens"}`` (also when the context
of the stream is full: the API has no other reason for it). ``cancelled`` and
``error`` are not an answer: a plain request gets the HTTP error of
:func:`~rawstream.sansio.openai.error_for_result`, a stream ends with
``response.failed``.

A stream is a sequence of named events, each ``event: <type>`` and one ``data:``
line whose JSON repeats the ``type`` and carries a ``sequence_number`` counting from
0. In order: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per delta, then ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done`` and the terminal event
holding the whole response: ``response.completed``, or ``response.incomplete``
(OpenAI's event for a response cut at ``max_output_tokens``), or
``response.failed``. There is no ``[DONE]``.

Streaming hot path: the delta events of one stream differ only in their sequence
number and text, so :class:`ResponseEncoder` cuts one full event into three constant
pieces once and per delta writes ``head + str(n) + middle + json.dumps(text) +
tail``. The bytes are those of :func:`~rawstream.sansio.sse.encode_event` of the
compact ``json.dumps`` of the event (the tests check this).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from rawstream.sansio.openai import (
    DEFAULT_MAX_MESSAGES,
    APIError,
    _bool,
    _int,
    _invalid,
    _number,
    _object,
    _text,
    error_for_result,
    load_json,
)
from rawstream.sansio.sse import encode_event
from rawstream.sansio.values import ChatMessage, FinishReason, GenerationRequest, Result, Usage

__all__ = [
    "ResponseEncoder",
    "ResponseObject",
    "ResponsesRequest",
    "message_item_id",
    "parse_response_request",
    "response_body",
    "response_id",
    "response_request_from_json",
    "response_status",
    "usage_json",
]

_COMPACT = (",", ":")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: Content parts that are text: what a user writes and what the model wrote earlier.
_TEXT_PARTS = ("input_text", "output_text")
#: Stateful features: this server stores no responses, conversations or prompts.
_NO_STATE = {
    "previous_response_id": "this server stores no responses: send the whole conversation",
    "conversation": "this server keeps no conversations: send the whole conversation",
    "prompt": "prompt templates are not supported: send input and instructions",
}


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated ``POST /v1/responses`` request."""

    #: What to generate; the engine's part of the request.
    generation: GenerationRequest
    #: The ``model`` field; ``None`` when absent (the server's only model is meant).
    model: str | None = None
    stream: bool = False
    #: Echoed in the response object.
    instructions: str | None = None
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True

    def __str__(self) -> str:
        mode = "stream" if self.stream else "whole"
        return f"<response model={self.model!r} {mode}>"


# --- parsing ---------------------------------------------------------------------------


def parse_response_request(
    body: bytes, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> ResponsesRequest:
    """Parse and validate a ``POST /v1/responses`` body."""
    return response_request_from_json(load_json(body), max_messages=max_messages)


def response_request_from_json(
    obj: object, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> ResponsesRequest:
    """Validate an already decoded ``POST /v1/responses`` body."""
    fields = _object(obj)
    _refuse_unsupported(fields)
    model = fields.get("model")
    if model is not None:
        if not isinstance(model, str):
            _invalid("model", "model must be a string", code="invalid_type")
        _text("model", model)
    instructions = fields.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            _invalid("instructions", "instructions must be a string", code="invalid_type")
        _text("instructions", instructions)
    messages = _input(fields.get("input"), max_messages)
    if instructions is not None:
        messages = (ChatMessage("system", instructions), *messages)
    generation = GenerationRequest(
        messages=messages,
        max_tokens=_int(fields, "max_output_tokens", None, minimum=1),
        temperature=_number(fields, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(fields, "top_p", 1.0, 0.0, 1.0),
        top_k=_int(fields, "top_k", 0, minimum=0),
        min_p=_number(fields, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=_number(fields, "repeat_penalty", 1.0, 0.0, float("inf"), open_low=True),
    )
    return ResponsesRequest(
        generation=generation,
        model=model,
        stream=_bool(fields, "stream", False),
        instructions=instructions,
        tool_choice=fields.get("tool_choice") or "auto",
        parallel_tool_calls=_bool(fields, "parallel_tool_calls", True),
    )


def _unsupported(param: str, message: str) -> NoReturn:
    _invalid(param, message, code="unsupported_parameter")


def _refuse_unsupported(fields: Mapping[str, Any]) -> None:
    """400 for each feature the request asks for that this server does not have."""
    tools = fields.get("tools")
    if tools is not None and not isinstance(tools, list):
        _invalid("tools", "tools must be a list", code="invalid_type")
    if tools:
        _unsupported("tools", "tools are not supported: this server generates text only")
    if fields.get("tool_choice") not in (None, "auto", "none"):
        _unsupported("tool_choice", "tool_choice must be 'auto' or 'none': there are no tools")
    for name, why in _NO_STATE.items():
        if fields.get(name) is not None:
            _unsupported(name, f"{name} is not supported: {why}")
    if _bool(fields, "store", False):
        _unsupported("store", "store: true is not supported: this server stores no responses")
    if _bool(fields, "background", False):
        _unsupported("background", "background: true is not supported: stream instead")
    reasoning = fields.get("reasoning")
    if isinstance(reasoning, dict) and all(v is None for v in reasoning.values()):
        reasoning = None  # {"effort": null} asks for nothing
    if reasoning is not None:
        _unsupported("reasoning", "reasoning is not supported by this model")
    _refuse_text_format(fields.get("text"))
    if _int(fields, "top_logprobs", 0, minimum=0):
        _unsupported("top_logprobs", "top_logprobs is not supported: no log probabilities")
    include = fields.get("include")
    if include is not None and not isinstance(include, list):
        _invalid("include", "include must be a list", code="invalid_type")
    if include:
        _unsupported("include", f"include is not supported: nothing to add, got {include!r}")
    if fields.get("truncation") not in (None, "disabled"):
        _unsupported(
            "truncation", "truncation must be 'disabled': a prompt too long is refused, not cut"
        )


def _refuse_text_format(text: object) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        _invalid("text", "text must be an object", code="invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        _invalid("text.format", "text.format must be an object", code="invalid_type")
    if fmt.get("type") != "text":
        _unsupported(
            "text.format",
            f"only text.format {{'type': 'text'}} is supported, got type {fmt.get('type')!r}",
        )


def _input(value: object, max_messages: int) -> tuple[ChatMessage, ...]:
    if value is None:
        _invalid("input", "input is required", code="missing_required_parameter")
    if isinstance(value, str):
        return (ChatMessage("user", _text("input", value)),)
    if not isinstance(value, list):
        _invalid("input", "input must be a string or a list of message items", code="invalid_type")
    if not value:
        _invalid("input", "input must not be empty")
    if len(value) > max_messages:
        _invalid(
            "input",
            f"input may hold at most {max_messages} items, got {len(value)}",
            code="too_many_messages",
        )
    return tuple(_item(i, item) for i, item in enumerate(value))


def _item(index: int, item: object) -> ChatMessage:
    where = f"input[{index}]"
    if not isinstance(item, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    kind = item.get("type", "message")
    if kind != "message":
        _invalid(
            f"{where}.type",
            f"only message items are supported, got type {kind!r}",
            code="unsupported_input",
        )
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        _invalid(f"{where}.role", f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}")
    content = item.get("content")
    if isinstance(content, str):
        text = _text(f"{where}.content", content)
    elif isinstance(content, list):
        text = "\n".join(_part(f"{where}.content[{j}]", p) for j, p in enumerate(content))
    else:
        _invalid(
            f"{where}.content",
            f"{where}.content must be a string or a list of text parts",
            code="invalid_type",
        )
    return ChatMessage(role=_ROLES[role], content=text)


def _part(where: str, part: object) -> str:
    if not isinstance(part, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    kind = part.get("type")
    if kind not in _TEXT_PARTS:
        _invalid(
            f"{where}.type",
            f"only input_text and output_text parts are supported, got type {kind!r}",
            code="unsupported_content",
        )
    text = part.get("text")
    if not isinstance(text, str):
        _invalid(f"{where}.text", f"{where}.text must be a string", code="invalid_type")
    return _text(f"{where}.text", text)


# --- responses --------------------------------------------------------------------------


def response_id(random_bytes: bytes) -> str:
    """A response id such as ``resp_5f0c...``; the caller supplies the randomness."""
    return "resp_" + random_bytes.hex()


def message_item_id(random_bytes: bytes) -> str:
    """An output message id such as ``msg_5f0c...``."""
    return "msg_" + random_bytes.hex()


def usage_json(usage: Usage) -> dict[str, Any]:
    """The Responses API's usage object (no cache or reasoning tokens to report)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_status(result: Result) -> tuple[str, dict[str, str] | None]:
    """``(status, incomplete_details)`` of a finished generation (see the module doc)."""
    if result.finish_reason is FinishReason.STOP:
        return "completed", None
    if result.finish_reason is FinishReason.LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    raise ValueError(f"{result.finish_reason} is not an answer; use error_for_result()")


@dataclass(frozen=True, slots=True)
class ResponseObject:
    """What every ``response`` object of one response shares; :meth:`to_json` builds one."""

    id: str
    created_at: int
    model: str
    request: ResponsesRequest

    def to_json(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: Usage | None = None,
        error: APIError | None = None,
        incomplete_details: dict[str, str] | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object in ``status``, as a JSON-ready dict."""
        g = self.request.generation
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": completed_at,
            "error": None if error is None else {"code": "server_error", "message": error.message},
            "incomplete_details": incomplete_details,
            "instructions": self.request.instructions,
            "max_output_tokens": g.max_tokens,
            "metadata": {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.request.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": g.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": self.request.tool_choice,
            "tools": [],
            "top_p": g.top_p,
            "truncation": "disabled",
            "usage": None if usage is None else usage_json(usage),
            "user": None,
        }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def response_body(
    response: ResponseObject, *, item_id: str, text: str, result: Result, completed_at: int
) -> bytes:
    """A non-streaming ``response`` body; ``result`` must have finished."""
    status, incomplete = response_status(result)
    output = [_message(item_id, status, [_text_part(text)])]
    body = response.to_json(
        status,
        output,
        usage=result.usage,
        incomplete_details=incomplete,
        completed_at=completed_at if status == "completed" else None,
    )
    return json.dumps(body, separators=_COMPACT).encode()


class ResponseEncoder:
    """Encodes one streamed response as its named SSE events (see the module doc).

    Call :meth:`start` once, :meth:`delta` per piece of text, then one of
    :meth:`finish` (which chooses the terminal event from the result) and
    :meth:`fail`. Sequence numbers count every event returned, so the bytes must be
    written in the order they were returned, none left out.
    """

    __slots__ = ("_done", "_head", "_middle", "_parts", "_sequence", "_tail", "item_id", "response")

    def __init__(self, response: ResponseObject, *, item_id: str) -> None:
        self.response = response
        self.item_id = item_id
        self._sequence = 0
        self._parts: list[str] = []
        self._done = False
        # One delta event, cut at two markers: the sequence number and the text.
        number, text = 123456789, "\x00rawstream-delta\x00"
        whole = self._event(self._delta_json(number, text)).decode()
        head, rest = whole.split(str(number), 1)
        middle, tail = rest.split(json.dumps(text), 1)
        self._head, self._middle, self._tail = head.encode(), middle.encode(), tail.encode()

    def _delta_json(self, sequence: int, text: str) -> dict[str, Any]:
        """One delta event as a dict: the slow, obviously right form."""
        return {
            "type": "response.output_text.delta",
            "sequence_number": sequence,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return encode_event(json.dumps(data, separators=_COMPACT), event=data["type"])

    def _next(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return self._event(event)

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("the stream has already ended")

    @property
    def ended(self) -> bool:
        """Whether :meth:`finish` or :meth:`fail` was called: the stream is over."""
        return self._done

    @property
    def text(self) -> str:
        """The text of every delta so far."""
        return "".join(self._parts)

    def start(self) -> bytes:
        """The four events before the first delta: the response, its item, its part."""
        self._check_open()
        where = {"output_index": 0}
        part = {**where, "item_id": self.item_id, "content_index": 0}
        return b"".join(
            [
                self._next("response.created", response=self.response.to_json("in_progress", [])),
                self._next(
                    "response.in_progress", response=self.response.to_json("in_progress", [])
                ),
                self._next(
                    "response.output_item.added",
                    **where,
                    item=_message(self.item_id, "in_progress", []),
                ),
                self._next("response.content_part.added", **part, part=_text_part("")),
            ]
        )

    def delta(self, text: str) -> bytes:
        """One ``response.output_text.delta`` (the hot path: one ``json.dumps``)."""
        self._check_open()
        self._parts.append(text)
        sequence = self._sequence
        self._sequence = sequence + 1
        return (
            self._head
            + str(sequence).encode()
            + self._middle
            + json.dumps(text).encode()
            + self._tail
        )

    def finish(self, result: Result, *, completed_at: int) -> bytes:
        """The end of the stream for ``result``.

        ``stop`` and ``length``: the three ``.done`` events, then
        ``response.completed`` or ``response.incomplete``. ``cancelled`` and
        ``error``: ``response.failed`` with the error of :func:`error_for_result`.
        """
        error = error_for_result(result)
        if error is not None:
            return self.fail(error, usage=result.usage)
        self._check_open()
        self._done = True
        status, incomplete = response_status(result)
        text = self.text
        part = _text_part(text)
        item = _message(self.item_id, status, [part])
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        terminal = "response.completed" if status == "completed" else "response.incomplete"
        response = self.response.to_json(
            status,
            [item],
            usage=result.usage,
            incomplete_details=incomplete,
            completed_at=completed_at if status == "completed" else None,
        )
        return b"".join(
            [
                self._next("response.output_text.done", **where, text=text, logprobs=[]),
                self._next("response.content_part.done", **where, part=part),
                self._next("response.output_item.done", output_index=0, item=item),
                self._next(terminal, response=response),
            ]
        )

    def fail(self, error: APIError, *, usage: Usage | None = None) -> bytes:
        """End the stream with ``response.failed`` (shutdown, engine failure, cancel).

        The failed response carries ``error`` and the text written so far, in an
        item marked ``incomplete``.
        """
        self._check_open()
        self._done = True
        item = _message(self.item_id, "incomplete", [_text_part(self.text)])
        response = self.response.to_json("failed", [item], usage=usage, error=error)
        return self._next("response.failed", response=response)
