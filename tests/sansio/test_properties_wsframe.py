"""Properties of the server's direct frame writer (rawstream.sansio.wsframe).

wsproto is the independent party: the bytes are those its server side writes, and
its client side parses any sequence of them, cut anywhere, back into the messages.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from rawstream.sansio.wsframe import data_frame

#: Payload lengths around each boundary of the length encoding (RFC 6455 5.2).
BOUNDARIES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537]
lengths = st.sampled_from(BOUNDARIES) | st.integers(0, 70_000)


@st.composite
def payloads(draw: st.DrawFn) -> str | bytes:
    """A text or binary message, often of a length at an encoding boundary."""
    size = draw(lengths)
    if draw(st.booleans()):
        return draw(st.binary(min_size=min(size, 64), max_size=64)).ljust(size, b"\xff")[:size]
    unit = draw(st.text(min_size=1, max_size=4))
    text = (unit * (size // max(1, len(unit.encode())) + 1)).encode()[:size]
    return text.decode("utf-8", "ignore")


def frame(message: str | bytes) -> bytes:
    if isinstance(message, str):
        return data_frame(message.encode())
    return data_frame(message, binary=True)


@given(payloads())
def test_a_frame_is_the_bytes_wsproto_writes(message: str | bytes) -> None:
    event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
    assert frame(message) == Connection(ConnectionType.SERVER).send(event)


@given(st.lists(payloads(), max_size=5), st.lists(st.integers(0, 200_000), max_size=8))
def test_frames_cut_anywhere_parse_back_into_the_messages(
    messages: list[str | bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(m) for m in messages)
    client = Connection(ConnectionType.CLIENT)
    received: list[str | bytes] = []
    parts: list[str | bytes] = []
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        client.receive_data(stream[start:end])
        for event in client.events():
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data)
            if event.message_finished:
                received.append(
                    "".join(p for p in parts if isinstance(p, str))
                    if isinstance(event, TextMessage)
                    else b"".join(p for p in parts if isinstance(p, bytes))
                )
                parts = []
    assert received == messages
