"""The exceptions the server ring raises to handlers.

Every one of them means "stop producing": the peer is gone, refused, or closed.
Handlers normally let them propagate; the connection turns each into the right
ending (nothing more to send, an HTTP error, or a WebSocket close code).
"""

from __future__ import annotations


class ConnectionGone(ConnectionError):
    """The peer went away (or the transport was aborted) while a producer waited."""


class WebSocketClosed(ConnectionGone):
    """The WebSocket is closed or closing; ``code`` is the close code (RFC 6455 7.4)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class UpgradeRefused(Exception):
    """A WebSocket handshake was invalid; the connection already answered it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
