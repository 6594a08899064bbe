"""Server data frames written by rawstream are the bytes wsproto would write."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from rawstream.sansio.wsframe import data_frame

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_matches_wsproto(size: int) -> None:
    text = ("é" * size)[:size] if size else ""
    server = Connection(ConnectionType.SERVER)
    assert data_frame(text.encode()) == server.send(TextMessage(data=text))


@pytest.mark.parametrize("size", SIZES)
def test_binary_frame_matches_wsproto(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    server = Connection(ConnectionType.SERVER)
    assert data_frame(payload, binary=True) == server.send(BytesMessage(data=payload))


def test_a_client_parses_it() -> None:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data_frame('{"type":"delta","text":"日本"}'.encode()))
    (event,) = list(client.events())
    assert isinstance(event, TextMessage)
    assert event.data == '{"type":"delta","text":"日本"}' and event.message_finished
