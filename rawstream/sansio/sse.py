"""Server-sent events: the encoder the server writes with and the parser clients read with.

The format is defined by the WHATWG HTML Living Standard, section 9.2 "Server-sent
events". An event stream is UTF-8 text made of lines; a blank line ends an event::

    id: 42
    event: message
    data: first line
    data: second line

    : a comment, ignored by every parser (used as a heartbeat)

Rules this module keeps:

- Encoding (9.2.5 "Parsing an event stream") - a line ends with CRLF, LF or CR. A
  ``data`` value that contains any of the three is therefore split into several
  ``data:`` lines, one per line of text; the parser joins them with LF. CR and CRLF
  in the data come back as LF, exactly as a browser's ``EventSource`` would give them.
- The parser removes one space after the colon, so the encoder always writes
  ``data: `` with one space and the value may itself begin with spaces.
- ``id`` and ``event`` are single-line values: a line break in them would start a new
  field, and a NUL makes browsers ignore the ``id``. The encoder refuses both with
  :class:`ValueError` rather than sending a stream that parses differently from what
  was meant.
- Heartbeats are comments (``:`` lines); they carry no ``id``, so they never move the
  client's last event ID.

Theory of operation of :class:`SSEParser`: ``feed(data)`` takes any slice of the byte
stream (split anywhere, even inside a UTF-8 sequence or between the CR and LF of a
CRLF) and returns the events completed by it. The parser implements 9.2.6
"Interpreting an event stream" line by line; each branch below quotes the sentence it
implements. ``last_event_id`` and ``retry`` are the values a reconnecting client
would use. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = [
    "HEARTBEAT",
    "SSEParser",
    "ServerSentEvent",
    "encode_comment",
    "encode_event",
]

# "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
# character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE
# RETURN (CR) character." (9.2.5). str.splitlines() would also split on VT, FF, U+2028
# and others, which the event stream format does not treat as line breaks.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: A comment line and the blank line that ends it: keeps proxies and clients from
#: timing out an idle stream. It has no ``id:``, so it never moves ``Last-Event-ID``.
HEARTBEAT = b":\n\n"


def encode_event(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event, ending with the blank line that dispatches it.

    ``data`` may hold several lines (CR, LF and CRLF all count as line breaks); each
    becomes its own ``data:`` line. ``data=None`` writes no ``data`` field: such a
    block only sets ``id`` or ``retry`` on the client and dispatches no event.
    ``retry`` is the reconnection time in milliseconds.

    Raises :class:`ValueError` for a line break or NUL in ``event`` or ``id``, a
    negative ``retry``, or when every argument is ``None``.
    """
    parts: list[str] = []
    if event is not None:
        _check_single_line("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_single_line("id", id)
        parts.append(f"id: {id}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"retry must be a non-negative integer, got {retry!r}")
        parts.append(f"retry: {retry}\n")
    if data is not None:
        for line in _LINE_BREAK.split(data):
            parts.append(f"data: {line}\n" if line else "data:\n")
    if not parts:
        raise ValueError("an event needs at least one of data, event, id, retry")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment block (``:`` lines and a blank line); parsers ignore it.

    A multi-line ``text`` becomes several comment lines. ``encode_comment()`` is
    :data:`HEARTBEAT`.
    """
    lines = _LINE_BREAK.split(text)
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode("utf-8") + b"\n"


def _check_single_line(name: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{name} must not contain CR, LF or NUL: {value!r}")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event, as a browser's ``MessageEvent`` would present it."""

    data: str
    #: The event type; ``"message"`` when the stream gave no ``event:`` field.
    event: str = "message"
    #: The last event ID string at dispatch (it persists across events).
    id: str = ""

    def __str__(self) -> str:
        return f"<SSE {self.event} id={self.id!r} data={self.data!r}>"


class SSEParser:
    """Incremental event stream parser (WHATWG HTML 9.2.6).

    Feed bytes as they arrive; each call returns the events the bytes completed.
    At the end of the stream, an event without its closing blank line is discarded,
    as the standard requires; :attr:`pending` tells whether that happened.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""  # text after the last complete line
        self._started = False  # the BOM check is done
        self._skip_lf = False  # the previous chunk ended with a CR
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = ""
        #: The last event ID string, as sent in ``Last-Event-ID`` on reconnection.
        self.last_event_id = ""
        #: The reconnection time in milliseconds, once the stream has set one.
        self.retry: int | None = None
        #: Comment lines seen (heartbeats, for instance).
        self.comments = 0

    @property
    def pending(self) -> bool:
        """True when fields or a partial line wait for a blank line that has not come."""
        return bool(self._buffer or self._data or self._event_type)

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse the next slice of the stream; return the events it completed."""
        # "Streams must be decoded using the UTF-8 decode algorithm." Invalid
        # sequences become U+FFFD, as that algorithm specifies.
        text = self._decoder.decode(data)
        if not self._started and text:
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any
            # are present."
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf and text:
            # The CR that ended the previous chunk was the first half of a CRLF.
            if text[0] == "\n":
                text = text[1:]
            self._skip_lf = False
        if not text:
            return []
        lines = _LINE_BREAK.split(self._buffer + text)
        self._buffer = lines.pop()  # the unterminated rest (often "")
        if text.endswith("\r"):
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            # "If the line is empty (a blank line): Dispatch the event."
            return self._dispatch()
        if line[0] == ":":
            # "If the line starts with a U+003A COLON character (:): Ignore the line."
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            # "Collect the characters on the line after the first U+003A COLON
            # character (:), and let value be that string. If value starts with a
            # U+0020 SPACE character, remove it from value."
            value = value[1:]
        # "Otherwise, the string is not empty but does not contain a U+003A COLON
        # character (:): Process the field using the whole line as the field name,
        # and the empty string as the field value." (partition gives exactly that.)
        if name == "event":
            # "Set the event type buffer to field value."
            self._event_type = value
        elif name == "data":
            # "Append the field value to the data buffer, then append a single U+000A
            # LINE FEED (LF) character to the data buffer."
            self._data.append(value)
        elif name == "id":
            # "If the field value does not contain U+0000 NULL, then set the last
            # event ID buffer to the field value. Otherwise, ignore the field."
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # "If the field value consists of only ASCII digits, then interpret the
            # field value as an integer in base ten, and set the event stream's
            # reconnection time to that integer. Otherwise, ignore the field."
            # ("".isdigit() is False.)
            self.retry = int(value)
        # "Otherwise: The field is ignored."
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        # "1. Set the last event ID string of the event source to the value of the
        # last event ID buffer. The buffer does not get reset."
        self.last_event_id = self._id_buffer
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            # "2. If the data buffer is an empty string, set the data buffer and the
            # event type buffer to the empty string and return."
            return None
        # "3. If the data buffer's last character is a U+000A LINE FEED (LF)
        # character, then remove the last character from the data buffer." (Joining
        # with LF, rather than appending one per line, never adds that last LF.)
        # "5. If the event type buffer has a value other than the empty string,
        # change the type of the newly created event to equal the value of the event
        # type buffer."
        return ServerSentEvent(
            data="\n".join(data), event=event_type or "message", id=self.last_event_id
        )
