"""``--trace``: every protocol event and state change, per connection.

Each line names the connection and a direction mark, after the debug logs of the
``websockets`` library::

    #3 = accepted from 127.0.0.1:50214
    #3 < Request(method=b'GET', target=b'/v1/models', ...)
    #3 = h11 client IDLE->DONE, server IDLE->SEND_RESPONSE
    #3 > Response(status_code=200, ...)

``<`` is an event parsed from the client, ``>`` an event sent to it, ``=`` a change
of state (h11's, wsproto's, or the connection's own). Bodies are cut to a short
preview so a streamed reply stays readable. Tracing is off by default and costs one
attribute test per event when off.

No secret reaches the trace (see :mod:`rawstream.sansio.redact`): a request's
target and headers are shown with ``REDACTED`` in place of an API key
(``Authorization: Bearer REDACTED``, ``?api_key=REDACTED``, the WebSocket offer
``bearer.REDACTED``, in whatever encoding the key came), and previews and state
lines, which may quote raw request bytes (h11's ``illegal header line: ...``), go
through the same rules.
"""

from __future__ import annotations

import logging

import h11

from rawstream.sansio.redact import redact_headers, redact_target, redact_text

logger = logging.getLogger("rawstream.trace")

_PREVIEW = 80


def _preview(data: bytes | bytearray | str) -> str:
    text = repr(bytes(data[:_PREVIEW]) if not isinstance(data, str) else data[:_PREVIEW])
    return redact_text(text) + (f"... ({len(data)} total)" if len(data) > _PREVIEW else "")


def _request(event: h11.Request) -> str:
    """``repr(event)`` with every secret in its target and headers hidden."""
    target = redact_target(event.target.decode("latin-1")).encode("latin-1")
    headers = redact_headers(event.headers)
    return (
        f"Request(method={event.method!r}, headers=<Headers({headers!r})>, "
        f"target={target!r}, http_version={event.http_version!r})"
    )


def describe(event: object) -> str:
    """A one-line description of an h11 or wsproto event, with secrets redacted."""
    if isinstance(event, h11.Request):
        return _request(event)
    data = getattr(event, "data", None)
    if isinstance(event, h11.Data):
        return f"Data({_preview(event.data)})"
    if data is not None and isinstance(data, bytes | bytearray | str):
        flags = []
        if getattr(event, "message_finished", True) is False:
            flags.append("more")
        tail = f", {' '.join(flags)}" if flags else ""
        return f"{type(event).__name__}({_preview(data)}{tail})"
    return repr(event)


class Tracer:
    """Writes trace lines for one connection when tracing is on."""

    __slots__ = ("enabled", "prefix")

    def __init__(self, conn_id: int, enabled: bool) -> None:
        self.enabled = enabled
        self.prefix = f"#{conn_id}"

    def inbound(self, event: object) -> None:
        """An event parsed from the peer."""
        logger.info("%s < %s", self.prefix, describe(event))

    def outbound(self, event: object) -> None:
        """An event about to be sent to the peer."""
        logger.info("%s > %s", self.prefix, describe(event))

    def state(self, what: str) -> None:
        """A change of state, described by the caller (secrets in it are redacted)."""
        logger.info("%s = %s", self.prefix, redact_text(what))

    def h11_states(self, conn: h11.Connection, before: tuple[object, object]) -> None:
        """Trace h11's states if they changed since ``before`` (their, our)."""
        after = (conn.their_state, conn.our_state)
        if after != before:
            logger.info(
                "%s = h11 client %s->%s, server %s->%s",
                self.prefix,
                _name(before[0]),
                _name(after[0]),
                _name(before[1]),
                _name(after[1]),
            )


def _name(state: object) -> str:
    return getattr(state, "__name__", str(state))
