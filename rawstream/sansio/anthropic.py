"""The Anthropic Messages API (``POST /v1/messages``), as values and pure functions.

Two directions, no I/O:

- **Requests in.** :func:`parse_messages_request` validates the body and returns a
  :class:`MessagesRequest`: the engine's
  :class:`~rawstream.sansio.values.GenerationRequest` plus what the answer needs.
  Errors raise the package's one error type,
  :class:`~rawstream.sansio.openai.APIError`; :func:`error_body` and
  :func:`error_event` render it in Anthropic's shape
  ``{"type": "error", "error": {"type", "message"}}`` with the status of
  :func:`error_status`.
- **Responses out.** :func:`message_body` writes the non-streaming ``message``;
  :class:`MessageEncoder` writes a stream as named SSE events.

Request rules (Anthropic's):

- ``model`` (a string) and ``max_tokens`` (at least 1) are required; ``messages`` is
  a non-empty list of ``{"role": "user" | "assistant", "content"}``, at most
  ``--max-messages`` of them, where ``content`` is a string or a list of ``text``
  blocks (joined with LF). ``system`` is a string or a list of ``text`` blocks.
- ``temperature`` 0..1, ``top_p`` 0..1, ``top_k`` >= 0, ``stop_sequences`` a list of
  at most :data:`MAX_STOP_SEQUENCES` strings that are not blank, ``stream``; and the
  extensions rawstream accepts everywhere: ``min_p`` and ``repeat_penalty``.
- Refused with ``400`` when asked for, never silently ignored: ``tools`` and a
  ``tool_choice`` that needs them, ``thinking`` (other than disabled),
  ``mcp_servers``, ``container``, ``output_config.format`` (structured output),
  content blocks that are not text (images, documents, tool use and results,
  thinking), and a last message from the assistant, which Anthropic continues
  ("prefill"): the engine always starts a new assistant turn, so it would answer
  something else than what was asked.
- Other fields (``metadata``, ``service_tier``, ``output_config.effort``, a
  block's ``cache_control``...) change nothing this server does, and are ignored.
  (Recent ``anthropic`` SDKs have no ``temperature``, ``top_p`` or ``top_k``
  arguments; they pass through ``extra_body``.)

Finish reasons map to ``stop_reason`` in one place, :func:`stop_reason`: ``stop`` is
``end_turn``, or ``stop_sequence`` when the caller knows which stop sequence matched;
``length`` is ``max_tokens`` when ``max_tokens`` tokens were generated and
``model_context_window_exceeded`` when the stream's context filled first.
``cancelled`` and ``error`` are not an answer: an error body, or a stream's last
event ``event: error``, and never ``message_stop``.

Statuses (:func:`error_status`): a full queue is Anthropic's ``529
overloaded_error`` (with ``Retry-After``); other 503s (the model is still loading)
keep 503, typed ``overloaded_error`` too since both mean "try again shortly"; 4xx
keep their status with the matching type; anything else is ``api_error``.

A stream, each event ``event: <type>`` and one ``data:`` line whose JSON repeats the
type: ``message_start`` (the message with empty ``content`` and the input tokens),
``content_block_start``, ``ping``, one ``content_block_delta`` (``text_delta``) per
delta, ``content_block_stop``, ``message_delta`` (``stop_reason``,
``stop_sequence``, the usage), ``message_stop``.

Streaming hot path: every delta event of a stream is the same but for its text, so
:class:`MessageEncoder` builds the constant prefix and suffix once and per delta does
one ``json.dumps``; the bytes are those of
:func:`~rawstream.sansio.sse.encode_event` of the compact JSON (the tests check).
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
from rawstream.sansio.values import ChatMessage, FinishReason, GenerationRequest, Result

__all__ = [
    "MAX_STOP_SEQUENCES",
    "OVERLOADED_STATUS",
    "MessageEncoder",
    "MessagesRequest",
    "error_body",
    "error_event",
    "error_status",
    "message_body",
    "message_id",
    "messages_request_from_json",
    "parse_messages_request",
    "stop_reason",
]

#: Most stop sequences one request may hold. Anthropic documents no limit; each one
#: is searched for in every piece of text the engine releases, so it needs one.
MAX_STOP_SEQUENCES = 16
#: Anthropic's status for "temporarily overloaded" (not an IANA status code).
OVERLOADED_STATUS = 529

_COMPACT = (",", ":")
_ROLES = ("user", "assistant")
#: The ``tool_choice`` types that ask for no tool.
_NO_TOOL = ("auto", "none")
#: Anthropic's error type for each status it documents.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    OVERLOADED_STATUS: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A validated ``POST /v1/messages`` request."""

    #: What to generate; ``generation.max_tokens`` is the required ``max_tokens``.
    generation: GenerationRequest
    model: str
    stream: bool = False

    @property
    def max_tokens(self) -> int:
        """The request's ``max_tokens`` (always set: Anthropic requires it)."""
        assert self.generation.max_tokens is not None
        return self.generation.max_tokens

    def __str__(self) -> str:
        mode = "stream" if self.stream else "whole"
        return f"<message model={self.model!r} max_tokens={self.max_tokens} {mode}>"


# --- errors ----------------------------------------------------------------------------


def error_status(error: APIError) -> int:
    """The HTTP status Anthropic would answer ``error`` with (see the module doc)."""
    return OVERLOADED_STATUS if error.code == "overloaded" else error.status


def _error_json(error: APIError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(error_status(error), "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_body(error: APIError) -> bytes:
    """The error as a response body, in Anthropic's shape."""
    return json.dumps(_error_json(error), separators=_COMPACT).encode()


def error_event(error: APIError) -> bytes:
    """The error as the last event of a stream (``event: error``); SDKs raise on it."""
    return encode_event(error_body(error).decode(), event="error")


# --- parsing ---------------------------------------------------------------------------


def parse_messages_request(
    body: bytes, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> MessagesRequest:
    """Parse and validate a ``POST /v1/messages`` body."""
    return messages_request_from_json(load_json(body), max_messages=max_messages)


def messages_request_from_json(
    obj: object, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> MessagesRequest:
    """Validate an already decoded ``POST /v1/messages`` body."""
    fields = _object(obj)
    _refuse_unsupported(fields)
    model = fields.get("model")
    if model is None:
        _invalid("model", "model is required", code="missing_required_parameter")
    if not isinstance(model, str):
        _invalid("model", "model must be a string", code="invalid_type")
    if fields.get("max_tokens") is None:
        _invalid("max_tokens", "max_tokens is required", code="missing_required_parameter")
    messages = _messages(fields.get("messages"), max_messages)
    system = _system(fields.get("system"))
    if system is not None:
        messages = (ChatMessage("system", system), *messages)
    generation = GenerationRequest(
        messages=messages,
        max_tokens=_int(fields, "max_tokens", None, minimum=1),
        temperature=_number(fields, "temperature", 1.0, 0.0, 1.0),
        top_p=_number(fields, "top_p", 1.0, 0.0, 1.0),
        top_k=_int(fields, "top_k", 0, minimum=0),
        min_p=_number(fields, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=_number(fields, "repeat_penalty", 1.0, 0.0, float("inf"), open_low=True),
        stop=_stop_sequences(fields.get("stop_sequences")),
    )
    return MessagesRequest(
        generation=generation, model=_text("model", model), stream=_bool(fields, "stream", False)
    )


def _unsupported(param: str, message: str) -> NoReturn:
    _invalid(param, message, code="unsupported_parameter")


def _refuse_unsupported(fields: Mapping[str, Any]) -> None:
    """400 for each feature the request asks for that this server does not have."""
    for name in ("tools", "mcp_servers"):
        value = fields.get(name)
        if value is not None and not isinstance(value, list):
            _invalid(name, f"{name} must be a list", code="invalid_type")
        if value:
            _unsupported(name, f"{name} are not supported: this server generates text only")
    choice = fields.get("tool_choice")
    if choice is not None and not (isinstance(choice, dict) and choice.get("type") in _NO_TOOL):
        _unsupported("tool_choice", "tool_choice must be auto or none: there are no tools")
    thinking = fields.get("thinking")
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        _unsupported("thinking", "extended thinking is not supported by this model")
    if fields.get("container") is not None:
        _unsupported("container", "containers are not supported: there are no tools")
    output = fields.get("output_config")
    if output is not None and not isinstance(output, dict):
        _invalid("output_config", "output_config must be an object", code="invalid_type")
    if output is not None and output.get("format") is not None:
        _unsupported("output_config.format", "structured output formats are not supported")


def _system(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _text("system", value)
    if not isinstance(value, list):
        _invalid("system", "system must be a string or a list of text blocks", code="invalid_type")
    return "\n".join(_block(f"system[{i}]", b) for i, b in enumerate(value))


def _messages(value: object, max_messages: int) -> tuple[ChatMessage, ...]:
    if value is None:
        _invalid("messages", "messages is required", code="missing_required_parameter")
    if not isinstance(value, list):
        _invalid("messages", "messages must be a list", code="invalid_type")
    if not value:
        _invalid("messages", "messages must not be empty")
    if len(value) > max_messages:
        _invalid(
            "messages",
            f"messages may hold at most {max_messages} messages, got {len(value)}",
            code="too_many_messages",
        )
    messages = tuple(_message(i, item) for i, item in enumerate(value))
    if messages[-1].role == "assistant":
        _unsupported(
            f"messages[{len(messages) - 1}].role",
            "a last message from the assistant (prefill) is not supported: end with a user message",
        )
    return messages


def _message(index: int, item: object) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    role = item.get("role")
    if role not in _ROLES:
        _invalid(f"{where}.role", f"{where}.role must be user or assistant; got {role!r}")
    content = item.get("content")
    if isinstance(content, str):
        text = _text(f"{where}.content", content)
    elif isinstance(content, list):
        text = "\n".join(_block(f"{where}.content[{j}]", b) for j, b in enumerate(content))
    else:
        _invalid(
            f"{where}.content",
            f"{where}.content must be a string or a list of text blocks",
            code="invalid_type",
        )
    return ChatMessage(role=role, content=text)


def _block(where: str, block: object) -> str:
    if not isinstance(block, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    kind = block.get("type")
    if kind != "text":
        _invalid(
            f"{where}.type",
            f"only text content blocks are supported, got type {kind!r}",
            code="unsupported_content",
        )
    text = block.get("text")
    if not isinstance(text, str):
        _invalid(f"{where}.text", f"{where}.text must be a string", code="invalid_type")
    return _text(f"{where}.text", text)


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        _invalid("stop_sequences", "stop_sequences must be a list of strings", code="invalid_type")
    if len(value) > MAX_STOP_SEQUENCES:
        _invalid(
            "stop_sequences",
            f"stop_sequences may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}",
        )
    for i, item in enumerate(value):
        where = f"stop_sequences[{i}]"
        if not isinstance(item, str):
            _invalid(where, f"{where} must be a string", code="invalid_type")
        if not item.strip():
            _invalid(where, f"{where} must contain something other than whitespace")
        _text(where, item)
    return tuple(value)


# --- responses --------------------------------------------------------------------------


def message_id(random_bytes: bytes) -> str:
    """A message id such as ``msg_5f0c...``; the caller supplies the randomness."""
    return "msg_" + random_bytes.hex()


def stop_reason(
    result: Result, *, max_tokens: int, stop_sequence: str | None = None
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` of a finished generation (see the module doc).

    ``stop_sequence`` is the stop string that ended the text, when the caller knows
    it; with ``None`` a stop is reported as ``end_turn``.
    """
    reason = result.finish_reason
    if reason is FinishReason.STOP:
        return ("stop_sequence", stop_sequence) if stop_sequence else ("end_turn", None)
    if reason is FinishReason.LENGTH:
        if result.usage.completion_tokens >= max_tokens:
            return "max_tokens", None
        return "model_context_window_exceeded", None
    raise ValueError(f"{reason} is not an answer; use error_for_result()")


def message_body(
    *,
    id: str,
    model: str,
    text: str,
    result: Result,
    max_tokens: int,
    stop_sequence: str | None = None,
) -> bytes:
    """A non-streaming ``message`` body; ``result`` must have finished."""
    reason, sequence = stop_reason(result, max_tokens=max_tokens, stop_sequence=stop_sequence)
    body = {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": result.usage.prompt_tokens,
            "output_tokens": result.usage.completion_tokens,
        },
    }
    return json.dumps(body, separators=_COMPACT).encode()


def _event(data: dict[str, Any]) -> bytes:
    return encode_event(json.dumps(data, separators=_COMPACT), event=data["type"])


class MessageEncoder:
    """Encodes one streamed message as its named SSE events (see the module doc).

    Call :meth:`start` once, :meth:`delta` per piece of text, then :meth:`finish`
    (complete or not: it chooses ``message_stop`` or an error event) or
    :meth:`error`. After the last call the stream is over; further calls raise
    :class:`ValueError`.
    """

    __slots__ = ("_done", "_prefix", "_suffix", "id", "input_tokens", "model")

    def __init__(self, *, id: str, model: str, input_tokens: int) -> None:
        self.id = id
        self.model = model
        self.input_tokens = input_tokens
        self._done = False
        marker = "\x00rawstream-delta\x00"
        head, tail = _event(self._delta_json(marker)).decode().split(json.dumps(marker))
        self._prefix, self._suffix = head.encode(), tail.encode()

    @staticmethod
    def _delta_json(text: str) -> dict[str, Any]:
        """One delta event as a dict: the slow, obviously right form."""
        return {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("the stream has already ended")

    def start(self) -> bytes:
        """``message_start``, ``content_block_start`` and a ``ping``."""
        self._check_open()
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        block = {"type": "text", "text": ""}
        return b"".join(
            [
                _event({"type": "message_start", "message": message}),
                _event({"type": "content_block_start", "index": 0, "content_block": block}),
                _event({"type": "ping"}),
            ]
        )

    def delta(self, text: str) -> bytes:
        """One ``content_block_delta`` (the hot path: one ``json.dumps`` of the text)."""
        if self._done:
            raise ValueError("the stream has already ended")
        return self._prefix + json.dumps(text).encode() + self._suffix

    def finish(self, result: Result, *, max_tokens: int, stop_sequence: str | None = None) -> bytes:
        """The end of the stream for ``result``.

        ``stop`` and ``length``: ``content_block_stop``, ``message_delta`` and
        ``message_stop``. ``cancelled`` and ``error``: the error event of
        :func:`error_for_result`, without ``message_stop``.
        """
        error = error_for_result(result)
        if error is not None:
            return self.error(error)
        self._check_open()
        self._done = True
        reason, sequence = stop_reason(result, max_tokens=max_tokens, stop_sequence=stop_sequence)
        usage = {
            "input_tokens": result.usage.prompt_tokens,
            "output_tokens": result.usage.completion_tokens,
        }
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        return b"".join(
            [
                _event({"type": "content_block_stop", "index": 0}),
                _event({"type": "message_delta", "delta": delta, "usage": usage}),
                _event({"type": "message_stop"}),
            ]
        )

    def error(self, error: APIError) -> bytes:
        """End the stream with ``event: error`` (engine failure, cancel); no ``message_stop``."""
        self._check_open()
        self._done = True
        return error_event(error)
