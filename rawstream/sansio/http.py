"""HTTP/1.1 values and policies that h11 leaves to the server.

h11 parses and serialises HTTP/1.1 messages and tracks the connection's state; it
deliberately leaves a few decisions to the server. rawstream makes them here, as
pure functions, so that they can be read, tested and changed in one place:

* **Request framing** (RFC 9112 section 6.3). h11 0.16 accepts a request that
  carries both ``Content-Length`` and ``Transfer-Encoding``; :func:`framing_error`
  rejects it, because the two framings disagreeing is how request smuggling between
  a proxy and a server works. A ``Transfer-Encoding`` in an HTTP/1.0 request is
  refused too (section 6.1: such a message "MUST" be treated "as if the framing is
  faulty"). What h11 itself refuses keeps h11's status: an unknown coding
  (``xchunked``, ``gzip, chunked``) is 501, conflicting ``Content-Length`` values
  or one with a sign, spaces or non-digits are 400; identical duplicates
  (``Content-Length: 3, 3``) are merged, as RFC 9110 section 8.6 allows.
* **HTTP version** (RFC 9110 section 2.5 and 15.6.6). Only major version 1 is
  spoken: ``HTTP/1.0`` and ``HTTP/1.1`` as such, a higher minor (``HTTP/1.2``) as
  1.1, as section 2.5 asks. Any other major version (``HTTP/2.0``, ``HTTP/3``,
  ``HTTP/0.9``, the HTTP/2 preface ``PRI * HTTP/2.0``) is ``505 HTTP Version Not
  Supported``, also when h11 already refused the request line
  (:func:`version_error_in_line`). h11 parses ``HTTP/2.0`` like a 1.x request.
* **Methods** (RFC 9110 section 9.1): "The method token is case-sensitive", and
  "An origin server that receives a request method that is unrecognized or not
  implemented SHOULD respond with the 501 (Not Implemented) status code."
  rawstream knows the methods in :data:`METHODS`; ``get`` is not ``GET``. CONNECT
  (rawstream is no proxy) and TRACE (it echoes credentials back to scripts) get 501.
* **Head size.** h11's ``max_incomplete_event_size`` only bounds a head that is
  still *incomplete*; a larger head arriving in one read is parsed whole.
  :func:`head_size` measures the parsed head so the server can answer 431 either way.
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
* **Empty lines before a request line.** RFC 9112 section 2.2: "In the interest of
  robustness, a server that is expecting to receive and parse a request-line SHOULD
  ignore at least one empty line (CRLF) received prior to the request-line." h11
  refuses such a request with 400, so the connection strips them before h11 sees
  them, with :func:`skip_empty_lines`: any number of CRLF or bare LF lines, on a
  fresh connection and between requests (the stray CRLF some clients send after a
  body). A bare CR is no empty line and stays an error. The empty lines count
  against ``--max-header-bytes`` together with the head that follows them, and the
  head deadline runs while they arrive, so a flood of them is bounded like a head.
* **Reason phrases.** h11 sends ``HTTP/1.1 200 `` with an empty reason unless it is
  given one, and some clients (h2load) count such a response as failed; every
  response rawstream sends carries the phrase from :data:`REASONS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

#: The reason phrase of every status code (RFC 9110 section 15).
REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

Headers = list[tuple[bytes, bytes]]

#: The methods rawstream implements (RFC 9110 section 9.3, and PATCH from RFC 5789);
#: any other method is answered 501.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

#: The empty lines (CRLF or bare LF) :func:`skip_empty_lines` drops.
_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")

#: A request line that h11 refused but that names an HTTP version: method, target
#: and ``HTTP/<major>[.<minor>]`` (h11 insists on exactly one digit each).
_VERSIONED_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/(\d+)(?:\.\d+)?\r?")


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
    # Section 6.1: "A server or client that receives an HTTP/1.0 message containing
    # a Transfer-Encoding header field MUST treat the message as if the framing is
    # faulty [...] and close the connection after processing the message."
    if b"transfer-encoding" in names and event.http_version == b"1.0":
        return BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
    return None


def version_error(http_version: bytes) -> BadRequest | None:
    """505 unless ``http_version`` (``b"1.1"``) has major version 1 (RFC 9110 2.5)."""
    if http_version.split(b".", 1)[0] != b"1":
        return BadRequest(505, f"HTTP/{http_version.decode('ascii', 'replace')} is not supported")
    return None


def version_error_in_line(line: bytes) -> BadRequest | None:
    """For a request line h11 refused: 505 if it is well formed but not HTTP/1.x.

    ``GET / HTTP/3`` fails h11's grammar (one digit, a dot, one digit) before any
    version check; RFC 9110 section 15.6.6 gives it a status of its own.
    """
    match = _VERSIONED_LINE.fullmatch(line)
    if match is not None and match.group(1) != b"1":
        return BadRequest(505, f"HTTP/{match.group(1).decode()} is not supported")
    return None


def skip_empty_lines(data: bytes, cr_held: bool = False) -> tuple[bytes, int, bool]:
    """Drop the empty lines in front of a request line (RFC 9112 section 2.2).

    ``data`` is what arrived while a request line is expected; ``cr_held`` says
    that the previous piece ended in a CR that may start a CRLF. Returns what is
    left from the first byte of the request line on, how many bytes were dropped,
    and whether a CR at the very end is held back for the next piece (it is not
    part of what is returned). A CR followed by anything but LF is returned as is:
    it is not an empty line, and h11 refuses it.
    """
    if cr_held:
        data = b"\r" + data
    match = _EMPTY_LINES.match(data)  # matches always, if only the empty string
    end = match.end() if match else 0
    if data[end:] == b"\r":
        return b"", end, True
    return data[end:], end, False


def head_size(event: h11.Request) -> int:
    """The size of a request head as parsed: request line, headers, blank line.

    Optional whitespace that h11 stripped is not counted, so this is at most the
    size on the wire.
    """
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in event.headers.raw_items():
        size += len(name) + len(value) + len(b": \r\n")
    return size


def parse_request(event: h11.Request) -> Request:
    """Turn h11's request event into a :class:`Request`, applying the policies above.

    Raises :class:`BadRequest` for an unsupported version (505), a framing
    conflict (400), an unknown method (501) or an unusable target (400).
    """
    error = version_error(event.http_version) or framing_error(event)
    if error is not None:
        raise error
    method = event.method.decode("ascii")
    if method not in METHODS:
        raise BadRequest(501, f"method {method!r} is not implemented")
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


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (RFC 9112 section 7.1).

    "chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF", with the size in hex.
    Empty data gives no bytes at all: a chunk of size zero is the *last-chunk*,
    which ends the body, and only h11's ``EndOfMessage`` may send that. This is
    exactly what h11 writes for ``Data`` on a chunked response; the SSE writer
    uses it on its hot path (see :mod:`rawstream.server.sse`).
    """
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
