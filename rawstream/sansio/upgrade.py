"""The WebSocket opening handshake, server side (RFC 6455 section 4.2).

A WebSocket starts life as an HTTP/1.1 GET. h11 parses it like any other request;
this module decides whether it is a valid upgrade and computes the ``101 Switching
Protocols`` response. The server then sends that response through the *same* h11
connection, takes the bytes h11 read past the request (``trailing_data``) and
hands them to wsproto's frame-level state machine. Nothing is serialised or parsed
a second time.

The rules, from section 4.2.1 ("Reading the Client's Opening Handshake"), in the
order :func:`check_upgrade` applies them:

1. "An HTTP/1.1 or higher GET request" -> otherwise 400 (405 for another method).
2. "An |Upgrade| header field containing the value "websocket""
3. "A |Connection| header field that includes the token "Upgrade""
4. "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
   decoded, is 16 bytes in length."
5. "A |Sec-WebSocket-Version| header field, with a value of 13." Section 4.4: a
   server that does not speak the version answers 426 with the versions it speaks.

Subprotocols (section 4.2.2, step 5.4): the server picks at most one of those the
client offered, and echoes exactly that one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from rawstream.sansio.http import Headers, Request

#: RFC 6455 section 1.3: the GUID appended to the client's key.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = b"13"


def is_upgrade_request(request: Request) -> bool:
    """Whether the client asks for a WebSocket (whether or not it asks correctly)."""
    return b"websocket" in request.header_tokens(b"upgrade")


def accept_key(client_key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2).

    "concatenate this with the Globally Unique Identifier [...] A SHA-1 hash
    (160 bits) [...] of this concatenated value is obtained [and] base64-encoded."
    """
    return base64.b64encode(hashlib.sha1(client_key + WEBSOCKET_GUID).digest())


@dataclass(frozen=True, slots=True)
class UpgradeRejected:
    """The handshake is invalid: answer ``status`` with ``headers`` and close."""

    status: int
    message: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class UpgradeAccepted:
    """The handshake is valid; ``offered`` lists the client's subprotocols in order."""

    key: bytes
    offered: tuple[str, ...]

    def response_headers(self, subprotocol: str | None = None) -> Headers:
        """Headers of the ``101`` response, selecting ``subprotocol`` if given."""
        headers: Headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_key(self.key)),
        ]
        if subprotocol is not None:
            if subprotocol not in self.offered:
                raise ValueError(f"subprotocol {subprotocol!r} was not offered")
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        return headers


def check_upgrade(request: Request) -> UpgradeAccepted | UpgradeRejected:
    """Validate an upgrade request (see the module docstring for the rules)."""
    if request.method != "GET":
        return UpgradeRejected(405, "WebSocket upgrade needs GET", [(b"allow", b"GET")])
    if request.http_version != "1.1":
        return UpgradeRejected(400, "WebSocket upgrade needs HTTP/1.1", [])
    if b"websocket" not in request.header_tokens(b"upgrade"):
        return UpgradeRejected(400, "missing 'Upgrade: websocket'", [])
    if b"upgrade" not in request.header_tokens(b"connection"):
        return UpgradeRejected(400, "missing 'Connection: Upgrade'", [])
    version = request.header(b"sec-websocket-version")
    if version is None or version.strip() != SUPPORTED_VERSION:
        return UpgradeRejected(
            426,
            "unsupported Sec-WebSocket-Version",
            [(b"sec-websocket-version", SUPPORTED_VERSION)],
        )
    key = request.header(b"sec-websocket-key")
    if key is None:
        return UpgradeRejected(400, "missing Sec-WebSocket-Key", [])
    key = key.strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        return UpgradeRejected(400, "Sec-WebSocket-Key is not 16 base64-encoded bytes", [])
    return UpgradeAccepted(key=key, offered=offered_subprotocols(request))


def offered_subprotocols(request: Request) -> tuple[str, ...]:
    """The subprotocols a client offers in ``Sec-WebSocket-Protocol``, in its order."""
    offered: list[str] = []
    for name, value in request.headers:
        if name == b"sec-websocket-protocol":
            offered.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return tuple(offered)
