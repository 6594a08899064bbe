"""Tool calls in OpenAI chat responses: reading the engine's text, writing the calls.

The engine streams text; when the request's reply is a call
(:func:`rawstream.sansio.tools.reply_kind`), a *decoder* reads that text as it comes
and says what it is, as events: :class:`Content` (text for ``message.content``),
:class:`CallStart` (a call's function is known) and :class:`CallArguments` (a
fragment of its arguments). Two decoders, one per way a call is written:

- :class:`CallDecoder`, for a forced call, which a grammar wrote: the arguments of
  the named function (``tool_choice: {"type": "function", ...}``), or
  ``{"name": ..., "arguments": {...}}`` (``tool_choice: required``). The name is
  known as soon as its string is whole, and the arguments stream in fragments.
- :class:`AutoDecoder`, for ``tool_choice: auto`` with a chat template that writes
  tools, where the model calls in its template's own way: text until a
  ``<tool_call>`` tag (the convention of Hermes and Qwen templates), then one
  ``{"name", "arguments"}`` object per ``<tool_call>...</tool_call>`` block, read
  at the end. A reply whose blocks do not parse, or name no offered tool, is text.

:func:`tool_call_body` and :class:`ToolCallChunkEncoder` write OpenAI's shapes:
``message.tool_calls`` with ``content: null`` (when there is no text) and
``finish_reason: "tool_calls"``; streamed, a first ``delta.tool_calls`` with
``index``, ``id``, ``type``, ``function.name`` and ``arguments: ""``, then the
arguments in ``function.arguments`` fragments, then the finish chunk.
:func:`body_of` and :func:`chunk_encoder` choose between these and the plain
writers of :mod:`rawstream.sansio.openai`, so the endpoint has one line for each.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rawstream.sansio.openai import (
    DONE,
    APIError,
    ChunkEncoder,
    CompletionRequest,
    Kind,
    error_for_result,
    usage_json,
)
from rawstream.sansio.tools import Reply, call_id, reply_kind
from rawstream.sansio.values import FinishReason, GenerationRequest, Result, Tool, ToolCall

__all__ = [
    "AutoDecoder",
    "BodyWriter",
    "CallArguments",
    "CallDecoder",
    "CallStart",
    "Content",
    "ToolCallChunkEncoder",
    "body_of",
    "chunk_encoder",
    "decode_reply",
    "decoder_for",
    "tool_call_body",
]

_COMPACT = (",", ":")
#: Writes a non-streaming body (the keywords of ``chat_completion_body``).
BodyWriter = Callable[..., bytes]


@dataclass(frozen=True, slots=True)
class Content:
    """Text of the reply that is not a call (``message.content``)."""

    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """Call ``index``'s function is known: ``name``."""

    name: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class CallArguments:
    """A fragment of call ``index``'s ``arguments`` (JSON text); the fragments joined
    are the whole arguments."""

    text: str
    index: int = 0


Event = Content | CallStart | CallArguments


# --- forced calls -----------------------------------------------------------------------

#: The head of a call as the grammar of ``call_schema`` lets a model write it:
#: ``{"name": "<name>", "arguments": `` with optional whitespace between the tokens.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
#: What may follow the arguments of such a call: the closing brace and whitespace.
_CALL_TAIL = re.compile(r"\s*\}?\s*\Z")
_TRAILING_SPACE = re.compile(r"\s*\Z")


class CallDecoder:
    """Reads the text of a forced call as it streams.

    ``kind`` is :attr:`Reply.ARGUMENTS` (the text is the arguments of ``name``) or
    :attr:`Reply.CALL` (the text is ``{"name": ..., "arguments": ...}``). Feed it
    each delta's text with :meth:`feed`, then call :meth:`finish`; each returns the
    events to send. Text that could still be the end of the wrapper (a closing
    brace, whitespace) is held back until more arrives, so the fragments joined
    are exactly the arguments, without the whitespace around them.
    """

    __slots__ = ("_arguments", "_buffer", "_kind", "_started", "name")

    def __init__(self, kind: Reply, name: str | None = None) -> None:
        if kind not in (Reply.CALL, Reply.ARGUMENTS):
            raise ValueError(f"a {kind} reply is not a forced call")
        self._kind = kind
        #: The function's name, once known.
        self.name = name if kind is Reply.ARGUMENTS else None
        self._started = False
        self._arguments = False  # whether a fragment of the arguments was given
        self._buffer = ""

    @property
    def calls(self) -> int:
        """Calls started so far (0 or 1)."""
        return int(self._started)

    def feed(self, text: str) -> list[Event]:
        """The events of the text so far."""
        self._buffer += text
        events: list[Event] = []
        if not self._started:
            if not self._start():
                return events
            assert self.name is not None
            events.append(CallStart(self.name))
        if not self._arguments:  # whitespace the grammar allows before them
            self._buffer = self._buffer.lstrip()
        tail = _CALL_TAIL if self._kind is Reply.CALL else _TRAILING_SPACE
        cut = tail.search(self._buffer)
        keep = cut.start() if cut is not None else len(self._buffer)
        if keep:
            events.append(CallArguments(self._buffer[:keep]))
            self._buffer = self._buffer[keep:]
            self._arguments = True
        return events

    def finish(self) -> list[Event]:
        """The last events: what was held back, less the wrapper's closing brace."""
        events: list[Event] = []
        if not self._started:
            if not self._start():
                return events
            assert self.name is not None
            events.append(CallStart(self.name))
        rest = self._buffer.strip() if not self._arguments else self._buffer.rstrip()
        if self._kind is Reply.CALL and rest.endswith("}"):
            rest = rest[:-1].rstrip()
        self._buffer = ""
        if rest:
            events.append(CallArguments(rest))
        return events

    def _start(self) -> bool:
        if self._kind is Reply.ARGUMENTS:
            if not self._buffer.strip():
                return False
        else:
            head = _CALL_HEAD.match(self._buffer)
            if head is None:
                return False
            self.name = str(json.loads(head.group(1)))
            self._buffer = self._buffer[head.end() :]
        self._started = True
        return True


# --- auto: calls the model writes in its template's way --------------------------------

_OPEN = "<tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


class AutoDecoder:
    """Reads a reply in which the model may call ``tools`` itself.

    Text streams as :class:`Content`, except a tail that could be the start of a
    ``<tool_call>`` tag, which waits for the next piece. From the tag on, the rest
    is kept and read by :meth:`finish`: each ``<tool_call>`` block (the last may
    lack its closing tag) must hold ``{"name": <an offered tool>, "arguments":
    <an object or its JSON text>}``; ``parameters`` is taken for ``arguments``, as
    some templates write it. If every block does, they are the calls; if not, the
    kept text is content after all. With ``parallel=False`` only the first call is
    kept.
    """

    __slots__ = ("_buffer", "_calling", "_names", "_parallel", "calls")

    def __init__(self, tools: Sequence[Tool], *, parallel: bool = True) -> None:
        self._names = {tool.name for tool in tools}
        self._parallel = parallel
        self._buffer = ""
        self._calling = False
        #: Calls found (known at :meth:`finish`).
        self.calls = 0

    def feed(self, text: str) -> list[Event]:
        """Content up to where a call could begin."""
        self._buffer += text
        if self._calling:
            return []
        start = self._buffer.find(_OPEN)
        if start >= 0:
            self._calling = True
            content, self._buffer = self._buffer[:start], self._buffer[start:]
            return [Content(content)] if content else []
        keep = _partial_tag(self._buffer)
        content = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(content) :]
        return [Content(content)] if content else []

    def finish(self) -> list[Event]:
        """The calls, or the kept text as content."""
        rest, self._buffer = self._buffer, ""
        if not self._calling:
            return [Content(rest)] if rest else []
        calls = self._parse(rest)
        if calls is None:
            return [Content(rest)]
        if not self._parallel:
            calls = calls[:1]
        self.calls = len(calls)
        events: list[Event] = []
        for index, (name, arguments) in enumerate(calls):
            events += [CallStart(name, index), CallArguments(arguments, index)]
        return events

    def _parse(self, text: str) -> list[tuple[str, str]] | None:
        blocks = _BLOCK.findall(text)
        if not blocks or _BLOCK.sub("", text).strip():
            return None  # text around the calls: not a reply of calls
        calls = []
        for block in blocks:
            try:
                call = json.loads(block)
            except ValueError:
                return None
            if not isinstance(call, dict) or call.get("name") not in self._names:
                return None
            arguments = call.get("arguments", call.get("parameters", {}))
            if isinstance(arguments, str):
                calls.append((str(call["name"]), arguments))
            elif isinstance(arguments, dict):
                calls.append((str(call["name"]), json.dumps(arguments)))
            else:
                return None
        return calls


def _partial_tag(text: str) -> int:
    """Length of the longest end of ``text`` that begins ``<tool_call>``."""
    for n in range(min(len(text), len(_OPEN) - 1), 0, -1):
        if _OPEN.startswith(text[-n:]):
            return n
    return 0


def decoder_for(request: GenerationRequest) -> CallDecoder | AutoDecoder:
    """The decoder of ``request``'s reply (one that is, or may be, a call)."""
    kind = reply_kind(request)
    if kind is Reply.AUTO:
        return AutoDecoder(request.tools, parallel=request.tool_choice.parallel)
    return CallDecoder(kind, request.tool_choice.name)


def decode_reply(request: GenerationRequest, text: str) -> tuple[str, list[ToolCall]]:
    """The content and the calls of a whole reply; calls' ids are left empty."""
    decoder = decoder_for(request)
    content: list[str] = []
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for event in decoder.feed(text) + decoder.finish():
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStart):
            names[event.index] = event.name
            arguments[event.index] = []
        else:
            arguments[event.index].append(event.text)
    calls = [ToolCall("", names[i], "".join(arguments[i])) for i in sorted(names)]
    return "".join(content), calls


def _finish_reason(result: Result, called: bool) -> str:
    if result.finish_reason is FinishReason.STOP:
        return "tool_calls" if called else "stop"
    if result.finish_reason is FinishReason.LENGTH:
        return "length"
    raise ValueError(f"{result.finish_reason} is not an OpenAI finish reason")


# --- responses --------------------------------------------------------------------------


def body_of(request: GenerationRequest, default: BodyWriter) -> BodyWriter:
    """The writer of ``request``'s non-streaming body: :func:`tool_call_body` for a
    reply that is or may be a call, else ``default`` (the plain writer)."""
    if reply_kind(request) is Reply.TEXT:
        return default
    return functools.partial(tool_call_body, request=request)


def chunk_encoder(
    request: CompletionRequest, *, id: str, created: int, model: str, include_usage: bool = False
) -> ChunkEncoder | ToolCallChunkEncoder:
    """The encoder of ``request``'s stream: :class:`ToolCallChunkEncoder` for a reply
    that is or may be a call, else :class:`~rawstream.sansio.openai.ChunkEncoder`."""
    if request.kind is Kind.CHAT and reply_kind(request.generation) is not Reply.TEXT:
        return ToolCallChunkEncoder(
            request.generation, id=id, created=created, model=model, include_usage=include_usage
        )
    return ChunkEncoder(
        request.kind, id=id, created=created, model=model, include_usage=include_usage
    )


def tool_call_body(
    *,
    id: str,
    created: int,
    model: str,
    text: str,
    result: Result,
    request: GenerationRequest,
    logprobs: object = None,
) -> bytes:
    """A non-streaming ``chat.completion`` whose reply is or may be a call.

    ``message.tool_calls`` holds the calls (ids from
    :func:`~rawstream.sansio.tools.call_id`) and ``message.content`` the text, or
    ``null`` when there is none beside the calls; ``finish_reason`` is
    ``tool_calls``, or ``length`` when ``max_tokens`` cut the reply (a forced
    call's arguments are then incomplete JSON, as OpenAI's would be). ``result``
    must have finished (:func:`~rawstream.sansio.openai.error_for_result`).
    Log-probabilities, if passed, are not reported here (``logprobs: null``).
    """
    content, calls = decode_reply(request, text)
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": call_id(id, index),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(calls)
        ]
    elif reply_kind(request) is Reply.AUTO:
        message["content"] = content  # a text reply: content is text, even empty
    body = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(result, bool(calls)),
            }
        ],
        "usage": usage_json(result.usage),
    }
    return json.dumps(body, separators=_COMPACT).encode()


class ToolCallChunkEncoder:
    """Encodes a streamed reply that is or may be a call, as OpenAI streams calls.

    The same protocol as :class:`~rawstream.sansio.openai.ChunkEncoder`:
    :meth:`start`, :meth:`delta` per piece of the engine's text, :meth:`finish`
    (or :meth:`error`). :meth:`delta` may return ``b""`` while the text says
    nothing yet (a name not whole, a tag that may begin): send nothing then.

    The chunks: ``{"role": "assistant", "content": null}`` first (``""`` for
    ``auto``, which may be text); ``{"content": ...}`` for text; once a call's name
    is known, ``{"tool_calls": [{"index", "id", "type": "function", "function":
    {"name", "arguments": ""}}]}``; then ``{"tool_calls": [{"index", "function":
    {"arguments": <fragment>}}]}`` per fragment; the finish chunk with
    ``finish_reason: "tool_calls"`` (``stop`` for a text reply, ``length`` when
    cut), the usage chunk if asked for, ``[DONE]``.
    """

    __slots__ = ("_auto", "_decoder", "_done", "_id", "_include_usage", "_template")

    def __init__(
        self,
        request: GenerationRequest,
        *,
        id: str,
        created: int,
        model: str,
        include_usage: bool = False,
    ) -> None:
        self._decoder = decoder_for(request)
        self._auto = isinstance(self._decoder, AutoDecoder)
        self._id = id
        self._include_usage = include_usage
        self._done = False
        self._template: dict[str, Any] = {
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def _event(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: dict[str, Any] = {**self._template, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, separators=_COMPACT).encode() + b"\n\n"

    def _events(self, events: list[Event]) -> bytes:
        parts = []
        for event in events:
            if isinstance(event, Content):
                parts.append(self._event({"content": event.text}))
                continue
            if isinstance(event, CallStart):
                call: dict[str, Any] = {
                    "index": event.index,
                    "id": call_id(self._id, event.index),
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
            else:
                call = {"index": event.index, "function": {"arguments": event.text}}
            parts.append(self._event({"tool_calls": [call]}))
        return b"".join(parts)

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("the stream has already ended")

    def start(self) -> bytes:
        """The first event: the assistant's role, with no content yet."""
        self._check_open()
        return self._event({"role": "assistant", "content": "" if self._auto else None})

    def delta(self, text: str, *_: object) -> bytes:
        """The events of one piece of text (maybe none: ``b""``). Log-probabilities,
        if passed, are not reported here."""
        self._check_open()
        return self._events(self._decoder.feed(text))

    def finish(self, result: Result) -> bytes:
        """The rest of the reply, the finish chunk, usage and ``[DONE]``; or, for a
        stream that did not finish, the error event of ``error_for_result``."""
        error = error_for_result(result)
        if error is not None:
            return self.error(error)
        self._check_open()
        self._done = True
        parts = [self._events(self._decoder.finish())]
        parts.append(self._event({}, _finish_reason(result, self._decoder.calls > 0)))
        if self._include_usage:
            usage = {**self._template, "choices": [], "usage": usage_json(result.usage)}
            parts.append(b"data: " + json.dumps(usage, separators=_COMPACT).encode() + b"\n\n")
        parts.append(DONE)
        return b"".join(parts)

    def error(self, error: APIError) -> bytes:
        """End the stream with an error event; no ``[DONE]``."""
        self._check_open()
        self._done = True
        return error.sse()
