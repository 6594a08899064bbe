"""``--trace`` lines: h11's own ``repr``, with every secret replaced by ``REDACTED``."""

from __future__ import annotations

import logging

import h11
import pytest

from rawstream.server.trace import Tracer, describe

KEY = "sk-trace-5d1e90c2"


def test_a_request_without_secrets_reads_as_h11_prints_it() -> None:
    event = h11.Request(
        method="GET",
        target="/v1/generations/gen-1/events?last_event_id=4",
        headers=[("Host", "127.0.0.1:8000"), ("Accept", "text/event-stream")],
    )
    assert describe(event) == repr(event)


@pytest.mark.parametrize(
    ("target", "headers", "shown"),
    [
        (
            "/v1/models",
            [("Authorization", f"Bearer {KEY}")],
            "(b'authorization', b'Bearer REDACTED')",
        ),
        (f"/v1/models?api_key={KEY}", [], "target=b'/v1/models?api_key=REDACTED'"),
        (f"/v1/models?api%5Fkey={KEY}&n=1", [], "target=b'/v1/models?api%5Fkey=REDACTED&n=1'"),
        ("/v1/models", [("X-Api-Key", KEY)], "(b'x-api-key', b'REDACTED')"),
        (
            "/v1/ws",
            [("Sec-WebSocket-Protocol", f"rawstream, bearer.{KEY}")],
            "(b'sec-websocket-protocol', b'rawstream, bearer.REDACTED')",
        ),
    ],
)
def test_a_request_shows_redacted_where_its_key_was(
    target: str, headers: list[tuple[str, str]], shown: str
) -> None:
    event = h11.Request(method="GET", target=target, headers=[("Host", "h"), *headers])
    line = describe(event)
    assert KEY not in line
    assert shown in line
    assert line.startswith("Request(method=b'GET', headers=<Headers([(b'host', b'h')")


def test_previews_and_state_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    body = f"400 Bad Request: illegal header line: b'Authorization : Bearer {KEY}'\n"
    assert KEY not in describe(h11.Data(data=body.encode()))
    assert "Bearer REDACTED" in describe(h11.Data(data=body.encode()))
    caplog.set_level(logging.INFO, logger="rawstream.trace")
    Tracer(7, enabled=True).state(
        f"h11 RemoteProtocolError: illegal request line: b'GET /?api_key={KEY} HTTP/1.1 '"
    )
    assert KEY not in caplog.text
    assert "#7 = h11 RemoteProtocolError: illegal request line: b'GET /?api_key=REDACTED" in (
        caplog.text
    )
