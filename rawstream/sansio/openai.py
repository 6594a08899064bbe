"""The OpenAI-compatible API, as values and pure functions.

Two directions, no I/O:

- **Requests in.** :func:`parse_chat_completion` and :func:`parse_completion` take the
  raw body of ``POST /v1/chat/completions`` and ``POST /v1/completions`` and return a
  :class:`CompletionRequest`: a :class:`~rawstream.sansio.values.GenerationRequest`
  plus what only the HTTP layer cares about (``stream``, ``include_usage``, the model
  name). Anything wrong raises :class:`APIError`, which knows its HTTP status and
  renders OpenAI's error body, so one place in the app turns errors into responses.
- **Responses out.** :class:`ChunkEncoder` writes a streaming response as SSE bytes;
  :func:`chat_completion_body`, :func:`text_completion_body` and :func:`models_body`
  write the plain JSON bodies.

Validation rules (what OpenAI documents, checked strictly):

- The body is a JSON object; ``NaN`` and ``Infinity`` are not JSON and are refused.
- A number is an ``int`` or ``float`` but never a ``bool`` (``true`` is not 1). An
  integer field refuses floats. ``null`` means "use the default" everywhere.
- Ranges: ``temperature`` 0..2, ``top_p`` 0..1, ``presence_penalty`` and
  ``frequency_penalty`` -2..2, ``max_tokens`` (or its newer name
  ``max_completion_tokens``, which wins when both are given) at least 1, ``n`` only 1.
- ``stop`` is a string or a list of at most 4 non-empty strings.
- ``stream_options`` is only allowed with ``"stream": true`` (OpenAI answers 400 too).
- Chat ``messages`` is a non-empty list of ``{"role", "content"}``. Roles: system,
  user, assistant, tool, and developer (OpenAI's newer name for system, mapped to
  system). ``content`` is a string, a list of ``{"type": "text", "text": ...}`` parts
  (joined with LF, as vLLM does), or ``null`` (an assistant turn with no text).
- Log-probabilities: chat ``logprobs`` is a boolean and ``top_logprobs`` an integer
  0..20 allowed only with ``"logprobs": true``; completions ``logprobs`` is an
  integer 0..5 (OpenAI's legacy format). See :mod:`rawstream.sansio.logprobs`.
- Extensions that llama.cpp servers accept and the engine supports: ``top_k`` (>= 0),
  ``min_p`` (0..1), ``repeat_penalty`` (> 0).
- Fields this server does not know (``user``, ``logit_bias``...) are ignored, as
  OpenAI-compatible servers commonly do. ``response_format``, ``tools`` and
  ``tool_choice`` are read by :mod:`rawstream.sansio.tools`, which the chat
  endpoint parses with.
- Every string used (message content and text parts, ``stop``, ``model``,
  ``prompt``) must be Unicode text: JSON can escape a lone UTF-16 surrogate
  (``"\\ud800"``), and ``json.loads`` decodes it (and the UTF-8-style bytes
  ``ED A0 80``) into a ``str`` that no encoder accepts. Such a string is refused with
  ``code: "invalid_unicode"`` and the field as ``param``, before the engine sees it.
  (A role is one of the names above, so it cannot hold one.)

Responses are ASCII: every JSON text is written with ``json.dumps``' default
``ensure_ascii``, so whatever a body carries (generated text, a model name, an error
quoting the request) it encodes, and a lone surrogate is written as its escape.

Streaming hot path: every chunk of one stream shares all of its JSON except the delta
text, so :class:`ChunkEncoder` builds the constant prefix and suffix once and per event
does only ``json.dumps(text)`` and three concatenations. The bytes are exactly those of
``json.dumps(chunk, separators=(",", ":"))`` (the tests check this). A JSON text with
default ``ensure_ascii`` never holds a raw line break, so each chunk is one ``data:``
line of the SSE format.

Engine finish reasons ``stop`` and ``length`` are OpenAI's; ``cancelled`` and ``error``
are not, so a stream that ends that way gets an error event and never ``[DONE]`` (a
client must not mistake a cut stream for a complete one).
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from rawstream.sansio.logprobs import (
    MAX_COMPLETION_LOGPROBS,
    MAX_TOP_LOGPROBS,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
)
from rawstream.sansio.values import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    Result,
    TokenLogprob,
    Usage,
)

__all__ = [
    "DEFAULT_MAX_MESSAGES",
    "DONE",
    "APIError",
    "ChunkEncoder",
    "CompletionRequest",
    "Kind",
    "chat_completion_body",
    "chat_completion_from_json",
    "completion_from_json",
    "completion_id",
    "error_for_result",
    "load_json",
    "models_body",
    "parse_chat_completion",
    "parse_completion",
    "refuse_beyond_text",
    "text_completion_body",
    "usage_json",
]

#: The SSE event that ends a complete stream.
DONE = b"data: [DONE]\n\n"

#: Most chat messages one request may hold unless the caller says otherwise
#: (``--max-messages``). Counted before any message is validated, so a body of
#: tens of thousands of tiny messages costs one ``len()``.
DEFAULT_MAX_MESSAGES = 1024

_COMPACT = (",", ":")  # separators of every JSON this module writes
_FLOAT_MAX = sys.float_info.max
_MAX_STOP = 4  # OpenAI: "Up to 4 sequences where the API will stop generating"
_ROLES = {
    "system": "system",
    "developer": "system",  # OpenAI's name for system messages on newer models
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


class Kind(enum.StrEnum):
    """The two completion endpoints, valued by the ``object`` of their response."""

    CHAT = "chat.completion"  #: ``POST /v1/chat/completions``
    TEXT = "text_completion"  #: ``POST /v1/completions``

    @property
    def id_prefix(self) -> str:
        """The prefix OpenAI uses for response ids of this kind."""
        return "chatcmpl-" if self is Kind.CHAT else "cmpl-"


class APIError(Exception):
    """A request the API refuses, with everything needed to answer it.

    ``status`` is the HTTP status to answer with; the other fields fill OpenAI's
    error body ``{"error": {"message", "type", "param", "code"}}``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def __repr__(self) -> str:
        return (
            f"APIError({self.status}, {self.message!r}, type={self.type!r}, "
            f"code={self.code!r}, param={self.param!r})"
        )

    def to_json(self) -> dict[str, Any]:
        """The error body as a JSON-ready dict."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        """The error body, UTF-8 JSON in OpenAI's shape."""
        return json.dumps(self.to_json(), separators=_COMPACT).encode()

    def sse(self) -> bytes:
        """The error as the last event of a stream (the ``openai`` SDK raises on it)."""
        return b"data: " + self.body() + b"\n\n"

    @classmethod
    def from_engine_error(cls, exc: SubmitError) -> APIError:
        """Translate an error the engine raised at submit (its ``param``, if it has one)."""
        return cls(exc.status, str(exc), exc.type, exc.code, getattr(exc, "param", None))


class SubmitError(Protocol):
    """What :meth:`APIError.from_engine_error` reads of an engine's error."""

    status: int
    type: str
    code: str | None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated completion request."""

    kind: Kind
    #: What to generate; the engine's part of the request.
    generation: GenerationRequest
    #: The ``model`` field; ``None`` when absent (the server's only model is meant).
    model: str | None = None
    stream: bool = False
    #: ``stream_options.include_usage``: add a usage chunk before ``[DONE]``.
    include_usage: bool = False

    def __str__(self) -> str:
        mode = "stream+usage" if self.include_usage else "stream" if self.stream else "whole"
        return f"<{self.kind} model={self.model!r} {mode}>"


def refuse_beyond_text(request: CompletionRequest, endpoint: str) -> CompletionRequest:
    """``request``, unless it asks for what a stream of plain text deltas cannot carry.

    ``/v1/ws`` deltas and the events of ``/v1/generations`` hold text only: a request
    for log-probabilities or tool calls there is a 400, never answered without them.
    (A ``response_format`` is fine: its reply is text too.)
    """
    wanted = request.generation
    if wanted.logprobs is not None:
        _invalid(
            "logprobs",
            f"logprobs are not sent on {endpoint}; use POST /v1/chat/completions",
            code="unsupported_parameter",
        )
    if wanted.tools:
        _invalid(
            "tools",
            f"tool calls are not sent on {endpoint}; use POST /v1/chat/completions",
            code="unsupported_parameter",
        )
    return request


# --- parsing ---------------------------------------------------------------------------


def parse_chat_completion(
    body: bytes, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> CompletionRequest:
    """Parse and validate a ``POST /v1/chat/completions`` body."""
    return chat_completion_from_json(load_json(body), max_messages=max_messages)


def parse_completion(body: bytes) -> CompletionRequest:
    """Parse and validate a ``POST /v1/completions`` body."""
    return completion_from_json(load_json(body))


def chat_completion_from_json(
    obj: object, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> CompletionRequest:
    """Validate an already decoded chat completion body (a WebSocket message, say)."""
    fields = _object(obj)
    messages = _messages(fields.get("messages"), max_messages)
    return _request(Kind.CHAT, fields, messages=messages)


def completion_from_json(obj: object) -> CompletionRequest:
    """Validate an already decoded completion body."""
    fields = _object(obj)
    prompt = fields.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # OpenAI accepts a batch of prompts; a batch of one is fine
    if isinstance(prompt, list):
        _invalid("prompt", "batched prompts are not supported: send one prompt per request")
    if prompt is None:
        _invalid("prompt", "prompt is required", code="missing_required_parameter")
    if not isinstance(prompt, str):
        _invalid("prompt", "prompt must be a string")
    return _request(Kind.TEXT, fields, prompt=_text("prompt", prompt))


def load_json(body: bytes) -> object:
    """Decode a request body as JSON, or raise a 400 :class:`APIError` saying why.

    ``NaN`` and ``Infinity`` are refused (they are not JSON); so are bodies that are
    not UTF-8, integers too long to convert, and nesting too deep to parse.
    """
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and over-long
        # integers; RecursionError a deeply nested body.
        raise APIError(400, f"We could not parse the JSON body of your request: {exc}") from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _object(obj: object) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return obj


def _invalid(param: str, message: str, code: str | None = "invalid_value") -> NoReturn:
    raise APIError(400, message, code=code, param=param)


def _text(param: str, value: str) -> str:
    """``value`` if it is Unicode text (UTF-8 can encode it); else a 400 naming ``param``.

    This runs for every string of every request, on the event loop. ``isascii()``
    answers at once for an ASCII string (CPython knows it without reading it); any
    other is encoded once, at C speed, which also finds the first lone surrogate.
    """
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        _invalid(
            param,
            f"{param} holds a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X} at "
            f"character {exc.start}), which is not a Unicode character: send valid text",
            code="invalid_unicode",
        )
    return value


def _request(
    kind: Kind,
    fields: Mapping[str, Any],
    *,
    messages: tuple[ChatMessage, ...] | None = None,
    prompt: str | None = None,
) -> CompletionRequest:
    model = fields.get("model")
    if model is not None:
        if not isinstance(model, str):
            _invalid("model", "model must be a string", code="invalid_type")
        _text("model", model)

    stream = _bool(fields, "stream", False)
    include_usage = False
    options = fields.get("stream_options")
    if options is not None:
        if not stream:
            _invalid(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
        if not isinstance(options, dict):
            _invalid("stream_options", "stream_options must be an object", code="invalid_type")
        include_usage = _bool(options, "include_usage", False, prefix="stream_options.")

    n = _int(fields, "n", 1)
    if n != 1:
        _invalid("n", f"n must be 1: this server generates one choice per request, got {n}")

    max_tokens = _int(fields, "max_completion_tokens", None, minimum=1)
    if max_tokens is None:
        max_tokens = _int(fields, "max_tokens", None, minimum=1)

    generation = GenerationRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_number(fields, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(fields, "top_p", 1.0, 0.0, 1.0),
        top_k=_int(fields, "top_k", 0, minimum=0),
        min_p=_number(fields, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=_number(fields, "repeat_penalty", 1.0, 0.0, math.inf, open_low=True),
        presence_penalty=_number(fields, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(fields, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=_int(fields, "seed", None, minimum=-(2**63), maximum=2**64 - 1),
        stop=_stop(fields.get("stop")),
        logprobs=_logprobs(kind, fields),
    )
    return CompletionRequest(
        kind=kind,
        generation=generation,
        model=model,
        stream=stream,
        include_usage=include_usage,
    )


def _bool(fields: Mapping[str, Any], name: str, default: bool, prefix: str = "") -> bool:
    value = fields.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        _invalid(prefix + name, f"{prefix}{name} must be a boolean", code="invalid_type")
    return value


def _number(
    fields: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    open_low: bool = False,
) -> float:
    value = fields.get(name)
    if value is None:
        return default
    # bool is a subclass of int in Python, but JSON's true is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _invalid(name, f"{name} must be a number", code="invalid_type")
    # An int is finite but may be beyond every float (1e400 written out in digits).
    finite = isinstance(value, int) or math.isfinite(value)
    too_low = value <= low if open_low else value < low
    if too_low or value > high or not finite or abs(value) > _FLOAT_MAX:
        low_text = f"greater than {low:g}" if open_low else f"at least {low:g}"
        high_text = "" if high == math.inf else f" and at most {high:g}"
        _invalid(name, f"{name} must be {low_text}{high_text}, got {value}")
    return float(value)


def _int(
    fields: Mapping[str, Any],
    name: str,
    default: int | None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    # Returns int | default's type; typed Any so callers keep their precise default.
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(name, f"{name} must be an integer", code="invalid_type")
    if minimum is not None and value < minimum:
        _invalid(name, f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        _invalid(name, f"{name} must be at most {maximum}, got {value}")
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    one = isinstance(value, str)
    if one:
        value = [value]
    if not isinstance(value, list):
        _invalid("stop", "stop must be a string or a list of strings", code="invalid_type")
    if len(value) > _MAX_STOP:
        _invalid("stop", f"stop may hold at most {_MAX_STOP} sequences, got {len(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            _invalid("stop", "stop must be a string or a list of strings", code="invalid_type")
        if not item:
            _invalid("stop", "stop sequences must not be empty")
        _text("stop" if one else f"stop[{i}]", item)
    return tuple(value)


def _logprobs(kind: Kind, fields: Mapping[str, Any]) -> int | None:
    """:attr:`GenerationRequest.logprobs` from OpenAI's fields of ``kind``.

    Chat: "``top_logprobs``: An integer between 0 and 20 [...] ``logprobs`` must be
    set to ``true`` if this parameter is used." Completions: "``logprobs``: Include
    the log probabilities on the ``logprobs`` most likely output tokens [...] The
    maximum value for ``logprobs`` is 5."
    """
    top: int | None
    if kind is Kind.TEXT:
        top = _int(fields, "logprobs", None, minimum=0, maximum=MAX_COMPLETION_LOGPROBS)
        return top
    on = _bool(fields, "logprobs", False)
    top = _int(fields, "top_logprobs", None, minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top is not None and not on:
        _invalid("top_logprobs", "top_logprobs may only be set when logprobs is true")
    return (top or 0) if on else None


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
    return tuple(_message(i, item) for i, item in enumerate(value))


def _message(index: int, item: object) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        _invalid(
            f"{where}.role",
            f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}",
        )
    content = item.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = _text(f"{where}.content", content)
    elif isinstance(content, list):
        text = "\n".join(_text_part(f"{where}.content[{j}]", p) for j, p in enumerate(content))
    else:
        _invalid(
            f"{where}.content",
            f"{where}.content must be a string or a list of text parts",
            code="invalid_type",
        )
    return ChatMessage(role=_ROLES[role], content=text)


def _text_part(where: str, part: object) -> str:
    if not isinstance(part, dict):
        _invalid(where, f"{where} must be an object", code="invalid_type")
    kind = part.get("type")
    if kind != "text":
        _invalid(
            f"{where}.type",
            f"only text content parts are supported, got type {kind!r}",
            code="unsupported_content",
        )
    text = part.get("text")
    if not isinstance(text, str):
        _invalid(f"{where}.text", f"{where}.text must be a string", code="invalid_type")
    return _text(f"{where}.text", text)


# --- responses --------------------------------------------------------------------------


def completion_id(kind: Kind, random_bytes: bytes) -> str:
    """A response id such as ``chatcmpl-5f0c...``; the caller supplies the randomness."""
    return kind.id_prefix + random_bytes.hex()


def usage_json(usage: Usage) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def error_for_result(result: Result) -> APIError | None:
    """The error to report for a generation that did not finish, or ``None``.

    ``stop`` and ``length`` are complete generations. ``cancelled`` (by shutdown or
    the server) and ``error`` are not, and OpenAI has no finish reason for them.
    """
    if result.finish_reason is FinishReason.ERROR:
        return APIError(
            500, result.error or "the generation failed", type="server_error", code="engine_error"
        )
    if result.finish_reason is FinishReason.CANCELLED:
        return APIError(
            503, "the generation was cancelled before it finished",
            type="server_error", code="cancelled",
        )  # fmt: skip
    return None


def _finish_reason(result: Result) -> str:
    if result.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
        raise ValueError(
            f"{result.finish_reason} is not an OpenAI finish reason; use error_for_result()"
        )
    return str(result.finish_reason)


def chat_completion_body(
    *,
    id: str,
    created: int,
    model: str,
    text: str,
    result: Result,
    logprobs: Sequence[TokenLogprob] | None = None,
) -> bytes:
    """A non-streaming ``chat.completion`` body; ``result`` must have finished.

    ``logprobs``: those of every token, when the request asked for them.
    """
    return _dumps(
        {
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None if logprobs is None else chat_logprobs(logprobs),
                    "finish_reason": _finish_reason(result),
                }
            ],
            "usage": usage_json(result.usage),
        }
    )


def text_completion_body(
    *,
    id: str,
    created: int,
    model: str,
    text: str,
    result: Result,
    logprobs: Sequence[TokenLogprob] | None = None,
) -> bytes:
    """A non-streaming ``text_completion`` body; ``result`` must have finished.

    ``logprobs``: those of every token, when the request asked for them.
    """
    return _dumps(
        {
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "text": text,
                    "index": 0,
                    "logprobs": None if logprobs is None else completion_logprobs(logprobs),
                    "finish_reason": _finish_reason(result),
                }
            ],
            "usage": usage_json(result.usage),
        }
    )


def models_body(models: Iterable[str], *, created: int, owned_by: str = "rawstream") -> bytes:
    """The ``GET /v1/models`` body."""
    return _dumps(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": owned_by}
                for name in models
            ],
        }
    )


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=_COMPACT).encode()


class ChunkEncoder:
    """Encodes one streaming response as SSE bytes.

    Call :meth:`start` once, :meth:`delta` for each piece of text, then either
    :meth:`finish` (complete or not: it chooses ``[DONE]`` or an error event) or
    :meth:`error`. After the last call the stream is over; further calls raise
    :class:`ValueError`.

    Chat chunks are ``chat.completion.chunk`` objects; the first carries
    ``{"role": "assistant", "content": ""}``. Text completion chunks are
    ``text_completion`` objects with a ``text`` field. With ``include_usage`` every
    chunk carries ``"usage": null`` and a last chunk with empty ``choices`` carries
    the usage, as OpenAI does. A delta given log-probabilities carries them in
    ``logprobs``, written through ``json.dumps`` of the whole chunk (the
    precomposed path is for deltas without).
    """

    __slots__ = (
        "_done",
        "_include_usage",
        "_offsets",
        "_prefix",
        "_suffix",
        "_template",
        "kind",
    )

    def __init__(
        self, kind: Kind, *, id: str, created: int, model: str, include_usage: bool = False
    ) -> None:
        self.kind = kind
        self._include_usage = include_usage
        self._done = False
        self._offsets: TextOffsets | None = None  # text_offset, across the chunks
        self._template: dict[str, Any] = {
            "id": id,
            "object": "chat.completion.chunk" if kind is Kind.CHAT else "text_completion",
            "created": created,
            "model": model,
        }
        # Cut one full chunk at a marker to get the constant prefix and suffix. The
        # marker is a JSON string, so json.dumps writes it verbatim once.
        marker = "\x00rawstream-delta\x00"
        whole = json.dumps(self._chunk(marker, None), separators=_COMPACT)
        quoted = json.dumps(marker)
        head, tail = whole.split(quoted)
        self._prefix = b"data: " + head.encode()
        self._suffix = tail.encode() + b"\n\n"

    def _chunk(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        """The chunk as a dict: the slow, obviously right form (used once per stream)."""
        if self.kind is Kind.CHAT:
            delta: dict[str, str] = {} if text is None else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"text": "" if text is None else text, "index": 0}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        chunk = {**self._template, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _event(self, chunk: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(chunk) + b"\n\n"

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("the stream has already ended")

    def start(self) -> bytes:
        """The first event: the assistant role for chat; nothing for text completions."""
        self._check_open()
        if self.kind is not Kind.CHAT:
            return b""
        chunk = self._chunk(None, None)
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return self._event(chunk)

    def delta(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """One content event (the hot path: one ``json.dumps`` of the text).

        ``logprobs``, one per token of ``text`` when the request asked for them,
        go in the chunk's ``logprobs`` (:mod:`rawstream.sansio.logprobs`).
        """
        if self._done:
            raise ValueError("the stream has already ended")
        if logprobs:
            return self._delta_with_logprobs(text, logprobs)
        return self._prefix + json.dumps(text).encode() + self._suffix

    def _delta_with_logprobs(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        chunk = self._chunk(text, None)
        if self.kind is Kind.CHAT:
            chunk["choices"][0]["logprobs"] = chat_logprobs(logprobs)
        else:
            if self._offsets is None:
                self._offsets = TextOffsets()
            chunk["choices"][0]["logprobs"] = completion_logprobs(logprobs, self._offsets)
        return self._event(chunk)

    def finish(self, result: Result) -> bytes:
        """The end of the stream for ``result``.

        For ``stop`` and ``length``: a chunk with the finish reason and an empty
        delta, the usage chunk if asked for, and ``[DONE]``. For ``cancelled`` and
        ``error``: the error event of :func:`error_for_result`, without ``[DONE]``.
        """
        error = error_for_result(result)
        if error is not None:
            return self.error(error)
        self._check_open()
        self._done = True
        parts = [self._event(self._chunk(None, _finish_reason(result)))]
        if self._include_usage:
            parts.append(
                self._event({**self._template, "choices": [], "usage": usage_json(result.usage)})
            )
        parts.append(DONE)
        return b"".join(parts)

    def error(self, error: APIError) -> bytes:
        """End the stream with an error event (shutdown, engine failure); no ``[DONE]``."""
        self._check_open()
        self._done = True
        return error.sse()
