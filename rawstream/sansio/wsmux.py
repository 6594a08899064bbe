"""The ``/v1/ws`` protocol: many logical streams over one WebSocket.

Every message is a JSON object in a WebSocket *text* message, with a ``type`` that
selects its handler. ``docs/ws-protocol.md`` is the user's reference; this header
states the rules as the code applies them.

Client -> server:

- ``{"type": "generate", "id": ID, ...chat completion body...}`` starts a stream.
  The rest of the object is validated exactly like a ``POST /v1/chat/completions``
  body (``stream`` and ``stream_options`` are ignored: a WebSocket stream always
  streams and always reports usage in its ``done``).
- ``{"type": "cancel", "id": ID}`` asks the server to stop stream ``ID``.
- ``{"type": "ping"}`` is answered with ``{"type": "pong"}``.

Server -> client, per accepted stream: ``delta`` messages with ``seq`` 0, 1, 2...,
then exactly one ``done`` or ``error``; after it the id is free again. A generate
that is refused (bad parameters, id in use, too many streams) gets exactly one
``error`` with its id and nothing else; an error never ends a *different* stream,
so the stream that already holds a reused id carries on.

An ``ID`` is a string of 1 to 128 characters or an integer from 0 to 2**53 - 1 (the
integers a JavaScript number holds exactly). It is echoed with its JSON type, so
``1`` and ``"1"`` are two different ids.

Errors come in two weights. :class:`Rejected` is about one message: the server
answers with an ``error`` and the connection carries on. :class:`Violation` means
the peer does not speak this protocol: the server closes the WebSocket with the
violation's code. RFC 6455 section 7.4.1 defines the codes used:

- 1003: "an endpoint is terminating the connection because it has received a type
  of data it cannot accept (e.g., an endpoint that understands only text data MAY
  send this if it receives a binary message)." -> a binary message.
- 1008: "an endpoint is terminating the connection because it has received a
  message that violates its policy. This is a generic status code that can be
  returned when there is no other more suitable status code" -> text that is not a
  JSON object, a missing or non-string ``type``, a generate or cancel without a
  valid ``id`` (its answer could not be addressed to any stream).
- 1007 ("data within a message that was not consistent with the type of the
  message (e.g., non-UTF-8 [RFC3629] data within a text message)") and 1009
  (message too big) are raised by the WebSocket layer before a message reaches
  this module.

An unknown ``type`` is a :class:`Rejected` (code ``unknown_message_type``), not a
violation: clients can probe for message kinds that newer servers add (document
sync, presence) without losing their connection.

Theory of operation of :class:`StreamTable` (one per connection): feed each
received message to :meth:`StreamTable.receive` and act on what it returns. It
admits generates against the per-connection limit, and it owns each stream's
``seq`` counter and its end, so the ordering rules above hold by construction: after
:meth:`StreamTable.finish` or :meth:`StreamTable.fail` encoding another message for
the stream raises :class:`KeyError`. The id stays in use until the caller has sent
that last message and calls :meth:`StreamTable.release`: a client cannot have seen
the end before, so a ``generate`` that reuses the id meanwhile reuses a live id
(``duplicate_id``), and a ``cancel`` cannot reach the wrong stream.

Cancellation: ``cancel`` of a live stream returns :class:`Cancel` (the app cancels
the engine stream); the stream then ends with ``done`` and ``finish_reason``
``"cancelled"`` and the usage so far. Deltas already in flight may arrive between
the ``cancel`` and the ``done``. ``cancel`` of an id that is not live (already
finished, never started) is ignored: the race with a natural end is normal. A stream
the *server* cancels (shutdown, disconnect of a viewer) ends with an ``error``
instead, code ``cancelled``, since the client did not ask for it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from rawstream.config import Config
from rawstream.sansio.openai import (
    DEFAULT_MAX_MESSAGES,
    APIError,
    CompletionRequest,
    refuse_beyond_text,
)
from rawstream.sansio.tools import structured_chat_completion
from rawstream.sansio.values import FinishReason, Result

__all__ = [
    "MAX_ID_CHARS",
    "MAX_INT_ID",
    "STREAM_TRANSITIONS",
    "SUBPROTOCOL",
    "Cancel",
    "ClientMessage",
    "CloseCode",
    "Generate",
    "Ping",
    "Rejected",
    "StreamId",
    "StreamState",
    "StreamTable",
    "Violation",
    "choose_subprotocol",
    "encode_delta",
    "encode_done",
    "encode_error",
    "encode_pong",
    "parse_message",
]

StreamId: TypeAlias = str | int

#: The subprotocol a client offers (and the server selects) on the handshake.
SUBPROTOCOL = "rawstream"
#: Longest string id, in characters.
MAX_ID_CHARS = 128
#: Largest integer id: JavaScript's Number.MAX_SAFE_INTEGER.
MAX_INT_ID = 2**53 - 1

_COMPACT = (",", ":")
# Fields of a generate message that are not part of the chat completion body, or
# that a WebSocket stream decides for itself.
_NOT_BODY = frozenset({"type", "id", "stream", "stream_options"})


class CloseCode(enum.IntEnum):
    """WebSocket close codes this protocol uses (RFC 6455 section 7.4.1)."""

    UNSUPPORTED_DATA = 1003  #: a binary message
    INVALID_PAYLOAD = 1007  #: invalid UTF-8 in a text message (WebSocket layer)
    POLICY_VIOLATION = 1008  #: not this protocol
    MESSAGE_TOO_BIG = 1009  #: over ``ws_max_message_bytes`` (WebSocket layer)


# --- client messages --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generate:
    """Start stream ``id`` with ``request`` (always streamed, usage always reported)."""

    id: StreamId
    request: CompletionRequest

    def __str__(self) -> str:
        return f"<generate {self.id!r}>"


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop stream ``id``; it will end with ``done`` and ``finish_reason`` cancelled."""

    id: StreamId

    def __str__(self) -> str:
        return f"<cancel {self.id!r}>"


@dataclass(frozen=True, slots=True)
class Ping:
    """An application-level ping; answer with :func:`encode_pong`."""

    def __str__(self) -> str:
        return "<ping>"


ClientMessage: TypeAlias = Generate | Cancel | Ping


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message refused on its own: send :meth:`encode` and carry on.

    ``id`` is the message's id, or ``None`` when it had no usable one.
    """

    id: StreamId | None
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def encode(self) -> str:
        """The ``error`` message to send."""
        return encode_error(self.id, self.message, type=self.type, code=self.code, param=self.param)

    def __str__(self) -> str:
        return f"<rejected {self.id!r} {self.code}: {self.message}>"


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol: close the WebSocket with ``code`` and ``reason``."""

    code: CloseCode
    reason: str

    def __str__(self) -> str:
        return f"<violation {int(self.code)}: {self.reason}>"


def parse_message(
    data: str | bytes, *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> ClientMessage | Rejected | Violation:
    """Parse one received WebSocket message (``bytes`` for a binary message).

    Only syntax and parameters are checked here; :meth:`StreamTable.receive` adds
    the per-connection rules (ids in use, the stream limit).
    """
    if isinstance(data, bytes):
        return Violation(CloseCode.UNSUPPORTED_DATA, "binary messages are not supported")
    try:
        obj = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return Violation(CloseCode.POLICY_VIOLATION, "message is not valid JSON")
    if not isinstance(obj, dict):
        return Violation(CloseCode.POLICY_VIOLATION, "message is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Violation(CloseCode.POLICY_VIOLATION, "message has no string 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        raw_id = obj.get("id")
        return Rejected(
            raw_id if _valid_id(raw_id) else None,
            f"unknown message type {kind!r}",
            code="unknown_message_type",
            param="type",
        )
    if parser is _parse_generate:
        return _parse_generate(obj, max_messages)
    return parser(obj)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _valid_id(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= MAX_ID_CHARS
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT_ID


def _id_of(obj: dict[str, Any]) -> StreamId | Violation:
    value = obj.get("id")
    if not _valid_id(value):
        return Violation(
            CloseCode.POLICY_VIOLATION,
            f"'{obj['type']}' needs an 'id': a string of 1 to {MAX_ID_CHARS} characters "
            f"or an integer from 0 to {MAX_INT_ID}",
        )
    assert isinstance(value, str | int)
    return value


def _parse_generate(
    obj: dict[str, Any], max_messages: int = DEFAULT_MAX_MESSAGES
) -> Generate | Rejected | Violation:
    id = _id_of(obj)
    if isinstance(id, Violation):
        return id
    body = {key: value for key, value in obj.items() if key not in _NOT_BODY}
    try:
        request = refuse_beyond_text(
            structured_chat_completion(body, max_messages=max_messages), "/v1/ws"
        )
    except APIError as exc:
        return Rejected(id, exc.message, type=exc.type, code=exc.code, param=exc.param)
    return Generate(id, request)


def _parse_cancel(obj: dict[str, Any]) -> Cancel | Violation:
    id = _id_of(obj)
    return id if isinstance(id, Violation) else Cancel(id)


def _parse_ping(obj: dict[str, Any]) -> Ping:
    return Ping()


# Dispatch by "type": a new kind of message is one parser and one entry here.
_PARSERS: dict[str, Callable[[dict[str, Any]], ClientMessage | Rejected | Violation]] = {
    "generate": _parse_generate,
    "cancel": _parse_cancel,
    "ping": _parse_ping,
}


def choose_subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol to select from the client's offer: ``rawstream`` or none.

    Never select anything else: a browser passes its API key as an offered
    ``bearer.<key>`` subprotocol (see :mod:`rawstream.sansio.auth`), and the selected
    value is sent back in the clear.
    """
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


# --- server messages --------------------------------------------------------------------


def _id_json(id: StreamId) -> str:
    return json.dumps(id)


def encode_delta(id: StreamId, seq: int, text: str) -> str:
    """``{"type":"delta","id":ID,"seq":N,"text":...}``."""
    return f'{{"type":"delta","id":{_id_json(id)},"seq":{seq},"text":{json.dumps(text)}}}'


def encode_done(id: StreamId, result: Result) -> str:
    """``{"type":"done","id":ID,"finish_reason":...,"usage":{...}}``."""
    usage = result.usage
    return json.dumps(
        {
            "type": "done",
            "id": id,
            "finish_reason": str(result.finish_reason),
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        },
        separators=_COMPACT,
    )


def encode_error(
    id: StreamId | None,
    message: str,
    *,
    type: str = "server_error",
    code: str | None = None,
    param: str | None = None,
) -> str:
    """``{"type":"error","id":ID,"error":{"message","type","param","code"}}``."""
    return json.dumps(
        {
            "type": "error",
            "id": id,
            "error": {"message": message, "type": type, "param": param, "code": code},
        },
        separators=_COMPACT,
    )


def encode_pong() -> str:
    """``{"type":"pong"}``."""
    return '{"type":"pong"}'


# --- the per-connection state machine ---------------------------------------------------


class StreamState(enum.Enum):
    """The life of one logical stream, as :class:`StreamTable` tracks it."""

    LIVE = "live"  #: a generate was accepted; deltas flow
    CANCELLING = "cancelling"  #: the client sent cancel; deltas in flight may still arrive
    #: its one done or error is encoded; the id is free once that is sent (release)
    ENDED = "ended"


#: The moves a stream can make, and nothing else (``docs/gen.py`` draws
#: ``docs/diagrams/ws-stream-states.md`` from this table). A refused generate never
#: becomes a stream: its error is the only message with its id.
STREAM_TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    StreamState.LIVE: frozenset({StreamState.CANCELLING, StreamState.ENDED}),
    StreamState.CANCELLING: frozenset({StreamState.ENDED}),
    StreamState.ENDED: frozenset(),
}


class _Stream:
    __slots__ = ("end", "prefix", "seq", "state")

    def __init__(self, id: StreamId) -> None:
        self.seq = 0
        self.state = StreamState.LIVE
        self.end: str | None = None  # the done or error, once encoded
        # Everything of a delta message before its seq number, encoded once.
        self.prefix = f'{{"type":"delta","id":{_id_json(id)},"seq":'

    def move(self, state: StreamState) -> None:
        assert state in STREAM_TRANSITIONS[self.state], f"{self.state} -> {state}"
        self.state = state


class StreamTable:
    """The live streams of one WebSocket connection.

    :meth:`receive` returns what to do with each client message:

    - :class:`Generate` -- the id is now live: submit the request to the engine.
      If the engine refuses it, call :meth:`fail`.
    - :class:`Cancel` -- cancel the engine stream (it is live).
    - ``str`` -- a reply to send as a text message (a pong, a refusal).
    - :class:`Violation` -- close the connection with its code.
    - ``None`` -- nothing to do (a cancel of an id that is not live).

    For each live stream, encode messages with :meth:`delta`, then exactly one of
    :meth:`finish` and :meth:`fail`; send that, then call :meth:`release` to free
    the id. When the connection closes, :meth:`clear` gives the ids whose engine
    streams must be cancelled (after :meth:`end_all`, to tell the client).
    """

    def __init__(self, max_streams: int, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self.max_messages = max_messages
        self._streams: dict[StreamId, _Stream] = {}

    @classmethod
    def from_config(cls, config: Config) -> StreamTable:
        """A table with ``config.ws_max_streams`` and ``config.max_messages``."""
        return cls(config.ws_max_streams, max_messages=config.max_messages)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, id: object) -> bool:
        return id in self._streams

    @property
    def ids(self) -> tuple[StreamId, ...]:
        """The ids in use (live, or ended but not released), oldest first."""
        return tuple(self._streams)

    def receive(self, data: str | bytes) -> Generate | Cancel | str | Violation | None:
        """Handle one received message (``bytes`` for a binary one)."""
        message = parse_message(data, max_messages=self.max_messages)
        if isinstance(message, Violation):
            return message
        if isinstance(message, Rejected):
            return message.encode()
        if isinstance(message, Ping):
            return encode_pong()
        if isinstance(message, Cancel):
            stream = self._streams.get(message.id)
            if stream is None or stream.state is not StreamState.LIVE:
                return None
            stream.move(StreamState.CANCELLING)
            return message
        # Generate.
        if message.id in self._streams:
            return Rejected(
                message.id,
                f"stream id {message.id!r} is already in use on this connection",
                code="duplicate_id",
                param="id",
            ).encode()
        if len(self._streams) >= self.max_streams:
            return Rejected(
                message.id,
                f"too many concurrent streams on this connection (limit {self.max_streams})",
                type="rate_limit_error",
                code="too_many_streams",
            ).encode()
        self._streams[message.id] = _Stream(message.id)
        return message

    def _open(self, id: StreamId) -> _Stream:
        """Stream ``id`` if it has not ended; :class:`KeyError` otherwise."""
        stream = self._streams[id]
        if stream.state is StreamState.ENDED:
            raise KeyError(id)
        return stream

    def delta(self, id: StreamId, text: str) -> str:
        """The next ``delta`` of stream ``id`` (``seq`` counts from 0)."""
        stream = self._open(id)
        seq = stream.seq
        stream.seq = seq + 1
        return f'{stream.prefix}{seq},"text":{json.dumps(text)}}}'

    def finish(self, id: StreamId, result: Result) -> str:
        """End stream ``id`` for ``result``; send the message, then :meth:`release`.

        ``stop``, ``length``, and ``cancelled`` after the client's ``cancel``, give
        ``done``. ``error``, and a cancellation the client did not ask for, give
        ``error``.
        """
        stream = self._open(id)
        reason = result.finish_reason
        if reason is FinishReason.ERROR:
            end = encode_error(
                id,
                result.error or "the generation failed",
                type="server_error",
                code="engine_error",
            )
        elif reason is FinishReason.CANCELLED and stream.state is not StreamState.CANCELLING:
            end = encode_error(
                id, "the server cancelled the stream", type="server_error", code="cancelled"
            )
        else:
            end = encode_done(id, result)
        return self._end(stream, end)

    def fail(self, id: StreamId, error: APIError) -> str:
        """End stream ``id`` with ``error`` (the engine refused it, it broke midway);
        send the message, then :meth:`release`."""
        stream = self._open(id)
        end = encode_error(id, error.message, type=error.type, code=error.code, param=error.param)
        return self._end(stream, end)

    @staticmethod
    def _end(stream: _Stream, end: str) -> str:
        # Encoded first: a stream whose end could not be encoded can still fail.
        stream.move(StreamState.ENDED)
        stream.end = end
        return end

    def release(self, id: StreamId) -> None:
        """Free id ``id``: its last message was sent (or the connection is gone)."""
        self._streams.pop(id, None)

    def end_all(self, error: APIError) -> list[str]:
        """The last message of every stream holding an id, oldest first.

        That is ``error`` for each stream still open (which ends it), and the end
        already encoded for each stream whose end was not yet released (it was not
        sent). For a connection about to close (shutdown); :meth:`clear` follows.
        """
        ends = []
        for id, stream in self._streams.items():
            ends.append(stream.end if stream.end is not None else self.fail(id, error))
        return ends

    def clear(self) -> tuple[StreamId, ...]:
        """Forget every stream (the connection is gone); return their ids to cancel."""
        ids = tuple(self._streams)
        self._streams.clear()
        return ids
