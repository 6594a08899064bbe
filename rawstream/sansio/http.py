"""HTTP/1.1 values and policies that h11 leaves to the server.

h11 parses and serialises HTTP/1.1 messages and tracks the connection's state; it
deliberately leaves a few decisions to the server. rawstream makes them here, as
pure functions, so that they can be read, tested and changed in one place:

* **Request framing** (RFC 9112 section 6.3). h11 0.16 accepts a request that
  carries both ``Content-Length`` and ``Transfer-Encoding``; :func:`framing_error`
  rejects it, because the two framings disagreeing is how request smuggling between
  a proxy and a server works.
* **Request targets** (RFC 9112 section 3.2). Origin-form (``/path?q``) is routed as
  is; absolute-form (``http://host/path``) is accepted and routed by its path, as
  section 3.2.2 requires of a server; asterisk-form (``*``) only for ``OPTIONS``.
  Anything else is a 400.
* **Line ends and obs-fold.** h11 accepts a bare LF as a line terminator (RFC 9112
  section 2.2: a recipient MAY recognise a single LF) and replaces an obs-fold with a
  space (section 5.2: a server MUST either reject the message or replace each
  obs-fold with SP). rawstream keeps both of h11's choices: neither lets one
  request be read as two, because rawstream is the only parser on the connection.
  Behind a proxy, the proxy's stricter parse runs first.
* **Reason phrases.** h11 sends ``HTTP/1.1 200 `` with an empty reason unless it is
  given one, and some clients (h2load) count such a response as failed; every
  response rawstream sends carries the phrase from :data:`REASONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

#: The reason phrase of every status code (RFC 9110 section 15).
REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

Headers = list[tuple[bytes, bytes]]


def reason(status: int) -> bytes:
    """The reason phrase for ``status`` (``b"Unknown"`` for an unregistered code)."""
    return REASONS.get(status, b"Unknown")


class BadRequest(Exception):
    """A request h11 accepted but rawstream refuses; carries the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head, the value handlers receive.

    ``headers`` are h11's: lower-cased names, values as sent. ``path`` is
    percent-decoded; ``query`` is the raw query string.
    """

    method: str
    target: str
    path: str
    query: str
    headers: Headers
    http_version: str

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of every ``name`` header, lower-cased."""
        tokens: set[bytes] = set()
        for key, value in self.headers:
            if key == name:
                tokens.update(t.strip().lower() for t in value.split(b","))
        tokens.discard(b"")
        return tokens

    def query_params(self) -> dict[str, str]:
        """The query string as a dict (the last of repeated names wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def __str__(self) -> str:
        return f"{self.method} {self.target} HTTP/{self.http_version}"


def framing_error(event: h11.Request) -> BadRequest | None:
    """Check a request's body framing beyond what h11 enforces.

    RFC 9112 section 6.3: "If a message is received with both a Transfer-Encoding
    and a Content-Length header field, the Transfer-Encoding overrides the
    Content-Length. Such a message might indicate an attempt to perform request
    smuggling (Section 11.2) or response splitting (Section 11.1) and ought to be
    handled as an error. [...] the server MUST close the connection after
    responding to such a request."
    """
    names = {name for name, _ in event.headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        return BadRequest(400, "both Content-Length and Transfer-Encoding")
    return None


def parse_request(event: h11.Request) -> Request:
    """Turn h11's request event into a :class:`Request`, applying the target policy.

    Raises :class:`BadRequest` for a framing conflict or an unusable target.
    """
    error = framing_error(event)
    if error is not None:
        raise error
    method = event.method.decode("ascii")
    target = event.target.decode("ascii", "replace")
    if target.startswith("/"):
        # origin-form (RFC 9112 section 3.2.1)
        raw_path, _, query = target.partition("?")
    elif target == "*":
        # asterisk-form (section 3.2.4): "only used for a server-wide OPTIONS request"
        if method != "OPTIONS":
            raise BadRequest(400, "asterisk-form target is only valid for OPTIONS")
        raw_path, query = "*", ""
    elif target.lower().startswith(("http://", "https://")):
        # absolute-form (section 3.2.2): "When an origin server receives a request
        # with an absolute-form of request-target, the origin server MUST ignore the
        # received Host header field (if any) and instead use the host information
        # of the request-target." Only the path matters for routing here.
        parts = urlsplit(target)
        raw_path, query = parts.path or "/", parts.query
    else:
        raise BadRequest(400, "request target is not origin-, absolute- or asterisk-form")
    return Request(
        method=method,
        target=target,
        path=unquote(raw_path),
        query=query,
        headers=list(event.headers),
        http_version=event.http_version.decode("ascii"),
    )


def error_body(status: int, message: str) -> bytes:
    """A small plain-text body for an error the server answers by itself."""
    return f"{status} {reason(status).decode()}: {message}\n".encode()
