"""Properties of the SSE codec (rawstream.sansio.sse): what is encoded is what parses.

The parser is the one a browser's ``EventSource`` implements (WHATWG HTML 9.2.6),
so a round trip through it is what a client sees. The stream is also cut at
arbitrary byte positions (inside UTF-8 sequences, between a CR and its LF): where it
is cut must never change what parses.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rawstream.sansio.sse import HEARTBEAT, ServerSentEvent, SSEParser, encode_comment, encode_event

#: Text with every line break the format knows, and the ones it does not (VT, FF,
#: NEL, U+2028), which must pass through untouched.
text = st.lists(
    st.characters(codec="utf-8")
    | st.sampled_from(["\r", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\ufeff", ":"]),
    max_size=40,
).map("".join)
single_line = text.filter(lambda s: not re.search(r"[\r\n\0]", s))
retries = st.none() | st.integers(0, 10**12)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "data": draw(st.none() | text),
        "event": draw(st.none() | single_line),
        "id": draw(st.none() | single_line),
        "retry": draw(retries),
    }
    if all(v is None for v in fields.values()):
        fields["data"] = ""
    return fields


def normalise(data: str) -> str:
    """What a client gets for ``data``: CRLF and CR become LF."""
    return re.sub(r"\r\n|\r", "\n", data)


def split_feed(stream: bytes, cuts: list[int]) -> tuple[SSEParser, list[ServerSentEvent]]:
    parser = SSEParser()
    got: list[ServerSentEvent] = []
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        got.extend(parser.feed(stream[start:end]))
    return parser, got


@given(events())
def test_one_event_round_trips(fields: dict[str, Any]) -> None:
    encoded = encode_event(**fields)
    parser = SSEParser()
    got = parser.feed(encoded)
    data, event, id = fields["data"], fields["event"], fields["id"]
    if data is None:
        assert got == []
    else:
        assert isinstance(data, str)
        assert got == [ServerSentEvent(normalise(data), event or "message", id or "")]
    assert parser.last_event_id == (id or "")
    assert parser.retry == fields["retry"]
    assert not parser.pending


@given(events())
def test_no_raw_line_break_splits_an_event(fields: dict[str, Any]) -> None:
    encoded = encode_event(**fields)
    encoded.decode("utf-8")
    # LF is the only line end written; the one blank line is the last.
    assert b"\r" not in encoded
    assert encoded.endswith(b"\n\n") and encoded.count(b"\n\n") == 1
    data = fields["data"]
    if isinstance(data, str):
        assert encoded.count(b"\ndata:") + encoded.startswith(b"data:") == (
            len(re.split(r"\r\n|\r|\n", data))
        )


@given(st.lists(events(), max_size=8), st.lists(st.integers(0, 2000), max_size=12))
def test_a_stream_parses_the_same_however_it_is_cut(
    stream_events: list[dict[str, Any]], cuts: list[int]
) -> None:
    stream = b"".join(encode_event(**f) for f in stream_events)
    expected: list[ServerSentEvent] = []
    last_id = ""
    for f in stream_events:
        if f["id"] is not None:
            last_id = str(f["id"])
        if isinstance(f["data"], str):
            expected.append(
                ServerSentEvent(normalise(f["data"]), str(f["event"] or "message"), last_id)
            )
    parser, got = split_feed(stream, cuts)
    assert got == expected
    assert parser.last_event_id == last_id
    assert not parser.pending


@given(st.lists(events(), max_size=4), st.lists(text, max_size=4), st.randoms())
def test_comments_and_heartbeats_never_dispatch_or_move_the_id(
    stream_events: list[dict[str, Any]], comments: list[str], rnd: random.Random
) -> None:
    blocks = [encode_event(**f) for f in stream_events]
    noise = [encode_comment(c) for c in comments] + [HEARTBEAT]
    mixed = blocks + noise
    rnd.shuffle(mixed)
    with_noise = SSEParser().feed(b"".join(mixed))
    in_order = [b for b in mixed if b in blocks]
    without_noise = SSEParser().feed(b"".join(in_order))
    assert with_noise == without_noise


@given(text)
def test_a_comment_is_only_comment_lines(comment: str) -> None:
    encoded = encode_comment(comment)
    parser = SSEParser()
    assert parser.feed(encoded) == []
    assert parser.comments == len(re.split(r"\r\n|\r|\n", comment))
    assert not parser.pending and parser.last_event_id == ""


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=10))
def test_the_parser_takes_any_bytes_and_any_cut(stream: bytes, cuts: list[int]) -> None:
    whole = SSEParser()
    expected = whole.feed(stream)
    parser, got = split_feed(stream, cuts)
    assert got == expected
    assert (parser.last_event_id, parser.retry, parser.comments) == (
        whole.last_event_id,
        whole.retry,
        whole.comments,
    )


@given(single_line, text.filter(lambda s: bool(re.search(r"[\r\n\0]", s))))
def test_id_and_event_with_a_line_break_or_nul_are_refused(good: str, bad: str) -> None:
    for fields in ({"id": bad, "data": good}, {"event": bad, "data": good}):
        try:
            encode_event(**fields)
        except ValueError:
            continue
        raise AssertionError(f"encoded {fields!r}")


@given(st.integers(max_value=-1) | st.booleans())
def test_retry_must_be_a_non_negative_integer(retry: int) -> None:
    try:
        encode_event("x", retry=retry)
    except ValueError:
        return
    raise AssertionError(f"encoded retry={retry!r}")
