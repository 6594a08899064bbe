"""The SSE encoder and parser (WHATWG HTML 9.2), without sockets."""

from __future__ import annotations

import pytest

from rawstream.sansio.sse import (
    HEARTBEAT,
    ServerSentEvent,
    SSEParser,
    encode_comment,
    encode_event,
)


def parse_all(data: bytes) -> list[ServerSentEvent]:
    return SSEParser().feed(data)


def parse_bytewise(data: bytes) -> list[ServerSentEvent]:
    parser = SSEParser()
    events: list[ServerSentEvent] = []
    for i in range(len(data)):
        events.extend(parser.feed(data[i : i + 1]))
    return events


# --- encoder -------------------------------------------------------------------------

ENCODE_CASES = [
    (dict(data="hello"), b"data: hello\n\n"),
    (dict(data=""), b"data:\n\n"),
    (dict(data="a\nb"), b"data: a\ndata: b\n\n"),
    (dict(data="a\r\nb\rc\nd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
    (dict(data="a\n"), b"data: a\ndata:\n\n"),
    (dict(data=" leading"), b"data:  leading\n\n"),
    (dict(data="x", event="update"), b"event: update\ndata: x\n\n"),
    (dict(data="x", id="7"), b"id: 7\ndata: x\n\n"),
    (dict(data="x", retry=2000), b"retry: 2000\ndata: x\n\n"),
    (dict(id="7"), b"id: 7\n\n"),
    (dict(retry=0), b"retry: 0\n\n"),
    (
        dict(data="{}", event="e", id="1", retry=5),
        b"event: e\nid: 1\nretry: 5\ndata: {}\n\n",
    ),
    (dict(data="caf\u00e9 \u2028 \x0b"), "data: caf\u00e9 \u2028 \x0b\n\n".encode()),
]


@pytest.mark.parametrize(("kwargs", "expected"), ENCODE_CASES)
def test_encode_event(kwargs: dict[str, object], expected: bytes) -> None:
    assert encode_event(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(data="x", id="a\nb"),
        dict(data="x", id="a\rb"),
        dict(data="x", id="a\0b"),
        dict(data="x", event="a\nb"),
        dict(data="x", event="a\r"),
        dict(data="x", event="\0"),
        dict(data="x", retry=-1),
        dict(data="x", retry=True),
        dict(),
    ],
)
def test_encode_event_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    ["", "one", "a\nb", "a\r\nb", "a\rb", "\n", "\n\n", "x\n", "\r\n\r\n", " sp", "a\r\n\rb\n\r"],
)
def test_round_trip_normalises_line_breaks_to_lf(data: str) -> None:
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    for parse in (parse_all, parse_bytewise):
        (event,) = parse(encode_event(data, id="9", event="t"))
        assert event == ServerSentEvent(data=expected, event="t", id="9")


def test_comments_and_heartbeat() -> None:
    assert HEARTBEAT == encode_comment() == b":\n\n"
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    parser = SSEParser()
    assert parser.feed(HEARTBEAT + encode_comment("a\r\nb")) == []
    assert parser.comments == 3
    assert parser.last_event_id == ""


# --- parser: the examples and rules of 9.2.6 --------------------------------------------

PARSE_CASES = [
    # The spec's first example: two events, the first with two data lines.
    (
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        [ServerSentEvent("YHOO\n+2\n10")],
    ),
    # The spec's second example: "The first block has just a comment, and will fire
    # nothing. [...] The third block fires an event with data "second event", and
    # also has an "id" field, this time with no value, which resets the last event
    # ID to the empty string [...] the last block just fires an event with the data
    # " third event" (with a single leading space character)."
    (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n",
        [
            ServerSentEvent("first event", id="1"),
            ServerSentEvent("second event", id=""),
            ServerSentEvent(" third event", id=""),
        ],
    ),
    # "The first block fires events with the data set to the empty string, as would
    # the last block if it was followed by a blank line. The middle block fires an
    # event with the data set to a single newline character."
    (b"data\n\ndata\ndata\n\ndata:", [ServerSentEvent(""), ServerSentEvent("\n")]),
    # "The following stream fires two identical events" (with and without the space).
    (b"data:test\n\ndata: test\n\n", [ServerSentEvent("test"), ServerSentEvent("test")]),
    # CR and CRLF line ends.
    (b"data: a\r\rdata: b\r\n\r\n", [ServerSentEvent("a"), ServerSentEvent("b")]),
    # Event types; an empty event field means "message".
    (
        b"event: add\ndata: 1\n\nevent:\ndata: 2\n\n",
        [ServerSentEvent("1", "add"), ServerSentEvent("2")],
    ),
    # The type does not leak into the next event.
    (b"event: add\ndata: 1\n\ndata: 2\n\n", [ServerSentEvent("1", "add"), ServerSentEvent("2")]),
    # An event with no data is not dispatched, and its type is dropped.
    (b"event: x\n\ndata: y\n\n", [ServerSentEvent("y")]),
    # The id persists across events until changed; a NUL in it is ignored.
    (
        b"id: 5\ndata: a\n\ndata: b\n\nid: 6\0\ndata: c\n\n",
        [ServerSentEvent("a", id="5"), ServerSentEvent("b", id="5"), ServerSentEvent("c", id="5")],
    ),
    # Unknown fields are ignored; so is a field name with a trailing space.
    (b"foo: bar\ndata : x\ndata: y\n\n", [ServerSentEvent("y")]),
    # Only the first colon splits.
    (b"data: a:b: c\n\n", [ServerSentEvent("a:b: c")]),
    # A leading BOM is ignored, once.
    (b"\xef\xbb\xbfdata: a\n\n", [ServerSentEvent("a")]),
    (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", []),
    # Invalid UTF-8 decodes to U+FFFD.
    (b"data: \xff\n\n", [ServerSentEvent("\ufffd")]),
    # Non-ASCII text.
    ("data: \u65e5\u672c \U0001f600\n\n".encode(), [ServerSentEvent("\u65e5\u672c \U0001f600")]),
]


@pytest.mark.parametrize(("stream", "expected"), PARSE_CASES)
def test_parse(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert parse_all(stream) == expected
    # Split anywhere (inside UTF-8 sequences and CRLF pairs too): same events.
    assert parse_bytewise(stream) == expected


def test_bom_split_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb") == []
    assert parser.feed(b"\xbfdata: a\n\n") == [ServerSentEvent("a")]


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # The LF completes the CRLF; it is not a second (blank) line.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\n\r\n") == [ServerSentEvent("a\nb")]


def test_retry() -> None:
    parser = SSEParser()
    assert parser.retry is None
    parser.feed(b"retry: 1500\n\n")
    assert parser.retry == 1500
    for bad in (b"retry: 15s\n\n", b"retry: -1\n\n", b"retry:\n\n", "retry: \u0661\n\n".encode()):
        parser.feed(bad)
        assert parser.retry == 1500
    parser.feed(encode_event("bye", retry=3000))
    assert parser.retry == 3000


def test_last_event_id_tracks_dispatch() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\n")
    assert parser.last_event_id == "1"  # the id buffer is only copied at dispatch
    parser.feed(b"\n")
    assert parser.last_event_id == "2"  # an event without data still sets it
    (event,) = parser.feed(b"data: b\n\n")
    assert event.id == "2"


def test_incomplete_event_is_pending_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: cut") == []
    assert parser.pending
    assert parser.feed(b" short\n") == []
    assert parser.pending
    assert parser.feed(b"\n") == [ServerSentEvent("cut short")]
    assert not parser.pending


def test_many_events_in_one_feed() -> None:
    stream = b"".join(encode_event(f"token {i}", id=str(i)) for i in range(100))
    events = SSEParser().feed(stream)
    assert [e.data for e in events] == [f"token {i}" for i in range(100)]
    assert events[-1].id == "99"


def test_str() -> None:
    assert str(ServerSentEvent("x", "e", "1")) == "<SSE e id='1' data='x'>"
