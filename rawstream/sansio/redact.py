"""Redaction: a request as it may be logged, with every secret it carries hidden.

The access log and ``--trace`` print request targets and heads. A request may carry
an API key in each of the places :mod:`rawstream.sansio.auth` reads one from; this
module replaces each such value with :data:`REDACTED` before anything is logged:

* **Query parameters** (:func:`redact_query`, :func:`redact_target`). A name is
  decoded exactly as the authenticator decodes it, with :func:`urllib.parse.parse_qsl`
  (``+`` is a space, then percent-decoding), so ``api%5Fkey=`` and ``%61pi_key=``,
  which authenticate like ``api_key=``, are redacted like it. Names are compared
  case-insensitively, which hides more than authenticates (``API_KEY=``) and never
  less. ``access_token`` (RFC 6750 section 2.3, "URI Query Parameter") is hidden
  too. Everything else in the target is kept byte for byte, so a redacted request
  still routes and reads the same.
* **Headers** (:func:`redact_headers`). ``Authorization`` and
  ``Proxy-Authorization`` keep their scheme and lose their credentials (RFC 9110
  section 11.4: ``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``),
  so a trace still shows *how* a client authenticated. A ``Sec-WebSocket-Protocol``
  offer starting ``bearer.`` (in any case) keeps only the prefix. Headers that are a
  secret as a whole (``X-Api-Key``, ``Api-Key``, ``Cookie``...) lose their value.
* **Free text** (:func:`redact_text`), for messages that quote raw request bytes,
  such as h11's ``illegal header line: b'Authorization : Bearer ...'``: the same
  rules applied to whatever looks like a query parameter, a header line or a
  subprotocol offer.

Pure functions, no I/O: the server ring calls them where it writes logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from rawstream.sansio.auth import QUERY_PARAMETER, SUBPROTOCOL_PREFIX

__all__ = [
    "CREDENTIAL_HEADERS",
    "QUERY_PARAMETERS",
    "REDACTED",
    "SECRET_HEADERS",
    "redact_headers",
    "redact_query",
    "redact_target",
    "redact_text",
]

#: What a log shows where a secret was.
REDACTED = "REDACTED"
_REDACTED_BYTES = REDACTED.encode()

#: Query parameters whose value is a secret (lower case, after decoding).
QUERY_PARAMETERS = frozenset({QUERY_PARAMETER, "access_token"})
#: Headers whose value is ``scheme credentials``: the scheme is kept.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
#: Headers whose whole value is a secret.
SECRET_HEADERS = frozenset({b"x-api-key", b"api-key", b"x-auth-token", b"cookie"})
_SUBPROTOCOL_HEADER = b"sec-websocket-protocol"
_PREFIX = SUBPROTOCOL_PREFIX.encode()

#: ``scheme`` then whitespace then credentials (RFC 9110 section 11.4).
_CREDENTIALS = re.compile(rb"(\s*\S+\s+)\S.*", re.DOTALL)
#: An absolute-form target's ``scheme://userinfo@`` (RFC 3986 section 3.2.1).
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*@)")


def _secret_name(raw_name: str) -> bool:
    """Whether a raw query parameter name decodes (as ``parse_qsl`` does) to a secret."""
    pairs = parse_qsl(raw_name + "=", keep_blank_values=True)
    return bool(pairs) and pairs[0][0].strip().lower() in QUERY_PARAMETERS


def redact_query(query: str) -> str:
    """``query`` (without the ``?``) with the value of every secret parameter hidden.

    The query is split on ``&`` exactly as :func:`~urllib.parse.parse_qsl` splits
    it, so each value the authenticator could read is replaced whole, including any
    ``#`` or ``?`` inside it. Inside other values, whatever follows a ``#`` or a
    ``?`` is redacted as a query of its own (a fragment or a nested URL).
    """
    if "=" not in query:
        return query
    pieces = query.split("&")
    for i, piece in enumerate(pieces):
        name, eq, value = piece.partition("=")
        if eq and value and _secret_name(name):
            pieces[i] = f"{name}={REDACTED}"
            continue
        nested = re.search(r"[#?]", piece)
        if nested is not None:
            start = nested.end()
            pieces[i] = piece[:start] + redact_query(piece[start:])
    return "&".join(pieces)


def redact_target(target: str) -> str:
    """A request target (``/path?query``, or absolute-form) with its secrets hidden.

    The query is everything after the first ``?``, as
    :func:`rawstream.sansio.http.parse_request` reads an origin-form target; an
    absolute-form target also loses its ``userinfo@``.
    """
    match = _USERINFO.match(target)
    if match is not None:
        target = f"{target[: match.start(1)]}{REDACTED}@{target[match.end(1) :]}"
    path, question, query = target.partition("?")
    if not question:
        return target
    return f"{path}?{redact_query(query)}"


def _redact_subprotocols(value: bytes) -> bytes:
    offers = value.split(b",")
    for i, offer in enumerate(offers):
        stripped = offer.lstrip()
        if stripped[: len(_PREFIX)].lower() == _PREFIX:
            lead = offer[: len(offer) - len(stripped)]
            offers[i] = lead + stripped[: len(_PREFIX)] + _REDACTED_BYTES
    return b",".join(offers)


def _redact_value(name: bytes, value: bytes) -> bytes:
    lower = name.lower()
    if lower in CREDENTIAL_HEADERS:
        match = _CREDENTIALS.fullmatch(value)
        return match.group(1) + _REDACTED_BYTES if match else _REDACTED_BYTES
    if lower in SECRET_HEADERS:
        return _REDACTED_BYTES
    if lower == _SUBPROTOCOL_HEADER:
        return _redact_subprotocols(value)
    return value


def redact_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A copy of ``headers`` (name, value pairs, any case) with every secret hidden."""
    return [(name, _redact_value(name, value)) for name, value in headers]


#: A query parameter anywhere in free text: a name at a boundary, ``=``, a value
#: that runs to the next ``&`` or whitespace.
_TEXT_PARAMETER = re.compile(r"(?<![^\s?&#;'\"(\[])([^\s?&#;=]+)=[^\s&]*")
#: A header line anywhere in free text (also after a ``\r\n`` escaped by ``repr``);
#: its value runs to the end of the line.
_HEADER_NAMES = "|".join(re.escape(n.decode()) for n in sorted(CREDENTIAL_HEADERS | SECRET_HEADERS))
_TEXT_HEADER = re.compile(
    r"(?:(?<![\w-])|(?<=\\[rn]))(" + _HEADER_NAMES + r")([ \t]*:[ \t]*)([^\r\n]*)",
    re.IGNORECASE,
)
#: A ``bearer.`` subprotocol offer anywhere in free text.
_TEXT_SUBPROTOCOL = re.compile(
    r"(?<![\w.-])(" + re.escape(SUBPROTOCOL_PREFIX) + r")[^\s,]+", re.IGNORECASE
)


def _text_parameter(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}={REDACTED}" if _secret_name(name) else match.group(0)


def _text_header(match: re.Match[str]) -> str:
    name, colon, value = match.groups()
    hidden = _redact_value(name.encode(), value.encode("utf-8", "surrogateescape"))
    return name + colon + hidden.decode("utf-8", "surrogateescape")


def redact_text(text: str) -> str:
    """Free text (an error message, a preview of bytes) with every secret hidden.

    For text that quotes raw request bytes; structured values go through
    :func:`redact_target` and :func:`redact_headers`, which are exact.
    """
    text = _TEXT_HEADER.sub(_text_header, text)
    text = _TEXT_SUBPROTOCOL.sub(r"\g<1>" + REDACTED, text)
    if "=" in text:
        text = _TEXT_PARAMETER.sub(_text_parameter, text)
    return text
