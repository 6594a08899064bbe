"""The authentication decision: who is calling, from the request head alone.

An :class:`Authenticator` holds the configured API keys and turns a request's headers
and query string into an :class:`Identity` (who the caller is) or ``None`` (answer
401). With no keys configured, every caller is :data:`ANONYMOUS`. Returning an
identity rather than a yes/no lets admission apply per-tenant limits later.

Where a key may come from, in the order they are tried (the first that matches wins):

1. ``Authorization: Bearer <key>`` (RFC 6750 section 2.1). "The "Bearer" auth-scheme
   is case-insensitive" per RFC 9110 section 11.1 ("It uses a case-insensitive
   token to identify the authentication scheme"). What OpenAI clients send.
2. A WebSocket subprotocol ``bearer.<key>`` in ``Sec-WebSocket-Protocol``. The
   browser ``WebSocket`` API cannot set headers, but it can offer subprotocols:
   ``new WebSocket(url, ["rawstream", "bearer." + key])``. The server selects
   ``rawstream`` and never echoes the key (Kubernetes passes tokens the same way).
   RFC 6455 section 4.1 limits subprotocol names to "characters in the range U+0021
   to U+007E not including separator characters as defined in [RFC2616]", so such
   a key must not contain ``()<>@,;:\\"/[]?={}``; keys in ``[A-Za-z0-9._~-]`` work.
3. The ``api_key`` query parameter, for the one browser API with neither headers nor
   subprotocols: ``EventSource``. Query strings end up in access logs and browser
   history; the server must redact them (:mod:`rawstream.sansio.redact`), and
   clients should prefer 1 or 2.
4. An ``x-api-key`` header: what the Anthropic SDK sends to ``POST /v1/messages``.

Comparisons are constant-time: each candidate key and each configured key are
hashed with SHA-256 first (so lengths leak nothing), and the candidate is compared
with *every* configured key with :func:`hmac.compare_digest`, without an early
exit, so the time taken does not depend on which key matched or how many bytes of
it were right.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from rawstream.config import Config

__all__ = [
    "ANONYMOUS",
    "CHALLENGE",
    "QUERY_PARAMETER",
    "SUBPROTOCOL_PREFIX",
    "Authenticator",
    "Identity",
    "unauthorized_body",
]

#: Prefix of the subprotocol that carries a key on a WebSocket handshake.
SUBPROTOCOL_PREFIX = "bearer."
#: The query parameter that carries a key (for ``EventSource``).
QUERY_PARAMETER = "api_key"
#: RFC 6750 section 3: a 401 "MUST include the HTTP "WWW-Authenticate" response
#: header field".
CHALLENGE = (b"www-authenticate", b'Bearer realm="rawstream"')


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a caller is. Never holds the key itself, so it is safe to log."""

    #: ``"anonymous"``, or ``"key-N"`` for the N-th configured key (from 0).
    tenant: str
    anonymous: bool = False

    def __str__(self) -> str:
        return self.tenant


#: The identity of every caller when no keys are configured.
ANONYMOUS = Identity("anonymous", anonymous=True)


def unauthorized_body() -> bytes:
    """The 401 body, in OpenAI's error shape; send it with :data:`CHALLENGE`."""
    return json.dumps(
        {
            "error": {
                "message": "Missing or invalid API key. Send 'Authorization: Bearer <key>'.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        separators=(",", ":"),
    ).encode()


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Authenticator:
    """Decides who a request comes from (see the module docstring for the rules)."""

    def __init__(self, keys: Iterable[str]) -> None:
        digests: list[bytes] = []
        for key in keys:
            if not key:
                raise ValueError("an API key must not be empty")
            digests.append(_digest(key.encode("utf-8")))
        self._digests = tuple(digests)
        self._identities = tuple(Identity(f"key-{i}") for i in range(len(digests)))

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        """An authenticator for ``config.api_key``."""
        return cls(config.api_key)

    @property
    def required(self) -> bool:
        """Whether keys are configured (otherwise everyone is :data:`ANONYMOUS`)."""
        return bool(self._digests)

    def authenticate(self, headers: list[tuple[bytes, bytes]], query: str = "") -> Identity | None:
        """The caller's identity, or ``None`` when no valid key was presented.

        ``headers`` are as h11 gives them (lower-case names); ``query`` is the raw
        query string without the ``?``.
        """
        if not self._digests:
            return ANONYMOUS
        for candidate in _candidates(headers, query):
            identity = self._match(candidate)
            if identity is not None:
                return identity
        return None

    def _match(self, candidate: bytes) -> Identity | None:
        digest = _digest(candidate)
        found = -1
        for index, key in enumerate(self._digests):
            # No early exit: every key is compared whatever the outcome.
            if hmac.compare_digest(digest, key) and found < 0:
                found = index
        return self._identities[found] if found >= 0 else None


def _candidates(headers: list[tuple[bytes, bytes]], query: str) -> Iterator[bytes]:
    """Every key the request presents, in the order of the module docstring."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token:
                yield token
    for name, value in headers:
        # Anthropic's clients send the key as "x-api-key: <key>" instead.
        if name.lower() == b"x-api-key" and value.strip():
            yield value.strip()
    prefix = SUBPROTOCOL_PREFIX.encode()
    for name, value in headers:
        if name.lower() == b"sec-websocket-protocol":
            for offered in value.split(b","):
                offered = offered.strip()
                if offered.startswith(prefix) and len(offered) > len(prefix):
                    yield offered[len(prefix) :]
    if query:
        for param, text in parse_qsl(query, keep_blank_values=False):
            if param == QUERY_PARAMETER and text:
                yield text.encode("utf-8")
