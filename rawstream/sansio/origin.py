"""The browser policy: which ``Origin`` and which ``Host`` a request may carry, and CORS.

rawstream listens on the user's own machine, and the user's browser visits other
sites. Three ways a page from another site could drive the server, and what stops
each:

1. **Cross-site requests.** CORS protects *responses*, not requests: a page may
   send a "simple" request (``GET``, ``HEAD`` or ``POST`` with a CORS-safelisted
   ``Content-Type``) to any origin without asking first, and only its answer is
   hidden. The Fetch standard ("CORS-safelisted request-header") lets a
   ``Content-Type`` through without a preflight unless "mimeType's essence is not
   "application/x-www-form-urlencoded", "multipart/form-data", or "text/plain"".
   So ``fetch(url, {method: "POST", body: json})`` from any page, sent as
   ``text/plain``, reaches ``/v1/generations`` and starts a generation. Such a
   request carries ``Origin`` (Fetch, "HTTP requests": "the `Origin` header is also
   included for all requests whose method is neither `GET` nor `HEAD`"); one whose
   origin is not allowed is refused with **403** before its body is read.
2. **WebSockets**, which CORS does not cover at all: the browser opens any
   ``ws://`` URL and lets the server decide. RFC 6455 section 10.2 ("Origin
   Considerations"): "Servers that are not intended to process input from any web
   page but only for certain sites SHOULD verify the |Origin| field is an origin
   they expect. If the origin indicated is unacceptable to the server, then it
   SHOULD respond to the WebSocket handshake with a reply containing HTTP 403
   Forbidden status code." The same check as above, before the ``101``.
3. **DNS rebinding.** A page at ``http://evil.example:8000`` whose name the
   attacker then points at ``127.0.0.1`` is *same-origin* with itself, so the
   browser lets it read every response, and its ``Origin`` check passes. What
   gives it away is ``Host: evil.example:8000``: a name this server does not
   answer to. A request whose ``Host`` is not an allowed name is refused with
   **421** before anything else.

A request **without** ``Origin`` (curl, the ``openai`` SDK, the ``websockets``
client, a browser navigating to the chat page) is unaffected by the origin check:
"The |Origin| header field protects from the attack cases when the untrusted party
is typically the author of a JavaScript application that is executing in the
context of the trusted client. [...] The intent is not to prevent non-browsers
from establishing connections but rather to ensure that trusted browsers under the
control of potentially malicious JavaScript cannot fake a WebSocket handshake."
(RFC 6455 section 10.2). A program can send any ``Origin`` it likes, but it could
also simply leave it out: the check is about what a *browser* lets a page do.
Browsers attach ``Origin`` to every ``POST``, ``DELETE``, WebSocket handshake and
cross-origin ``fetch``; a cross-site ``<img>`` or ``<script>`` ``GET`` goes out
without one, but every route that changes anything here takes ``POST``, ``DELETE``
or a WebSocket, and the page cannot read such a ``GET``'s answer.

**Origins** (RFC 6454). Section 6.2 serialises an origin as the scheme, ``"://"``,
the host, and "If the port part of the origin triple is different from the default
port for the protocol given by the scheme part of the origin triple: Append a
U+003A COLON code point (":") and the given port, in base ten". Section 5: "the two
origins are the same if, and only if, they have identical schemes, hosts, and
ports". So :class:`Origin` compares scheme, host and port exactly, after
lower-casing the scheme and the host and filling in the default port
(``http://localhost`` is ``http://localhost:80``). ``Origin: null`` is what section
7.3 has a browser send from "a "privacy-sensitive" context" (a sandboxed frame, a
``file:`` page, a cross-site redirect): it names no one, so it is allowed only
under ``--allow-origin '*'``.

An origin is allowed when it is

* the server's own: ``http://127.0.0.1:PORT``, ``http://localhost:PORT``,
  ``http://[::1]:PORT`` and ``http://HOST:PORT`` for the bound address; or
* the origin of the ``Host`` the request was sent to (``http`` or ``https``, the
  same name and port): a page this server served under an accepted name, such as
  the chat page opened as ``http://192.168.1.5:8000/``. The ``Host`` check runs
  first, so this never admits a rebinding page; or
* listed with ``--allow-origin`` (repeatable), or any origin with ``'*'``.

**Hosts.** ``127.0.0.1``, ``localhost``, ``::1`` and the bound address are always
accepted (no attacker controls what they resolve to), plus every ``--allow-host``
name, or any name with ``'*'`` (which turns the rebinding defence off). Names are
compared case-insensitively, without the port. Bound to a wildcard address
(``0.0.0.0``, ``::``), the server is reachable at addresses it cannot list, so it
also accepts any **IP-literal** ``Host`` (``192.168.1.5:8000``, ``[fe80::1]``):
rebinding needs a *name* whose address the attacker changes, and a browser sends
an IP literal as ``Host`` only when the page's own URL was that address, where it
connects to exactly that address. A machine name (``mybox.lan``) must then be
listed with ``--allow-host``. A request without ``Host`` (HTTP/1.0 allows that;
h11 already refuses an HTTP/1.1 one) names nothing to check and is not refused for
it; an empty or malformed one is a 400. RFC 9112 section 3.2: "A server MUST respond with a 400
(Bad Request) status code to any HTTP/1.1 request message that lacks a Host header
field and to any request message that contains more than one Host header field
line or a Host header field with an invalid field value." An absolute-form target
(``GET http://name/path``) names its host itself (section 3.2.2), and that name is
the one checked.

**CORS for allowed origins** (Fetch standard, "CORS protocol"). A *CORS-preflight
request* "uses `OPTIONS` as method and includes the following header:
`Access-Control-Request-Method`"; it is answered here, before authentication
(a preflight never carries credentials), with ``204`` and the methods and headers a
page may use, for :data:`MAX_AGE` seconds. The actual responses to an allowed
origin echo it in ``Access-Control-Allow-Origin`` (never ``*``, and never
``Access-Control-Allow-Credentials``: keys travel in ``Authorization``, not
cookies), expose :data:`EXPOSE_HEADERS` to scripts, and say ``Vary: Origin``. The
Fetch standard ("CORS protocol and HTTP caches") asks for ``Vary:
Origin`` also on responses to requests without ``Origin`` when the answer depends
on it, so that a response cached from a navigation is not reused for a CORS
request; responses to ``GET`` and ``HEAD`` (the only ones a cache reuses) always
carry it.

Everything here is pure: :meth:`OriginPolicy.check` takes a method, a target and
headers and returns a :data:`Decision`; the app carries it out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from rawstream.config import Config
from rawstream.sansio.http import Headers

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "EXPOSE_HEADERS",
    "MAX_AGE",
    "Allowed",
    "Decision",
    "Origin",
    "OriginPolicy",
    "Preflight",
    "Refused",
    "parse_host",
    "parse_origin",
]

_K = TypeVar("_K")
_V = TypeVar("_V")

#: RFC 6454 section 4: the default port of each scheme an ``Origin`` may name.
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}
#: Addresses that mean "every interface" when bound (asyncio binds all for ``""``).
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
#: Host names always accepted: loopback, whose address no attacker controls.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: The methods of rawstream's API (``HEAD`` wherever ``GET``).
ALLOW_METHODS = b"GET, HEAD, POST, DELETE"
#: Request headers a page may always send (``Last-Event-ID``: a resumed stream);
#: a preflight's ``Access-Control-Request-Headers`` adds the names it asks for.
ALLOW_HEADERS = ("authorization", "content-type", "last-event-id")
#: Response headers beyond the CORS-safelisted ones that scripts may read: the
#: 503's ``Retry-After``, the 201's ``Location``, the 401's ``WWW-Authenticate``.
EXPOSE_HEADERS = b"retry-after, location, www-authenticate"
#: How long a browser may reuse a preflight answer, in seconds. Chromium caps the
#: value at 7200 and Firefox at 86400; ten minutes lets a changed policy reach pages soon.
MAX_AGE = 600

_VARY_ORIGIN = (b"vary", b"origin")
#: RFC 6454 section 7.1: ``serialized-origin = scheme "://" host [ ":" port ]``.
_SERIALIZED_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^\s/?#\[\]@:]+)"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE,
)
#: RFC 9110 section 7.2: ``Host = uri-host [ ":" port ]`` (an IP-literal in brackets).
_HOST = re.compile(
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._~%!$&'()*+,;=-]*)(?::(?P<port>[0-9]*))?",
    re.IGNORECASE,
)
#: RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


# ---------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class Origin:
    """A scheme/host/port triple (RFC 6454), normalised for comparison.

    ``scheme`` and ``host`` are lower case, an IPv6 host has no brackets, and
    ``port`` is filled in from :data:`DEFAULT_PORTS` when the serialisation left it
    out (``None`` for a scheme without a default, such as ``chrome-extension``).
    """

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        """The ASCII serialisation of RFC 6454 section 6.2."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


def _normal_host(host: str) -> str:
    """``host`` lower-cased, an IPv6 literal without brackets and in compressed form."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return host
    return host


def parse_origin(text: str) -> Origin | None:
    """The origin ``text`` serialises, or ``None`` if it is not one (or ``null``).

    Strict, as a browser sends it: ``scheme://host[:port]`` and nothing else, no
    path, no user info, no trailing slash.
    """
    match = _SERIALIZED_ORIGIN.fullmatch(text)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS.get(scheme)
    if port is not None and port > 65535:
        return None
    return Origin(scheme, _normal_host(match["host"]), port)


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` value, or ``None`` if it is not valid.

    The name is lower case; an IPv6 literal loses its brackets. ``port`` is
    ``None`` when the value has none (or an empty one, which RFC 9110 allows).
    """
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    return _normal_host(match["host"]), port


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class Allowed:
    """Serve the request; every response to it carries ``headers`` (CORS, Vary)."""

    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Preflight:
    """A CORS preflight from an allowed origin: answer ``204`` with ``headers``."""

    headers: tuple[tuple[bytes, bytes], ...]
    status: int = 204


@dataclass(frozen=True, slots=True)
class Refused:
    """Refuse the request before any work: ``status``, and an error ``code``."""

    status: int
    message: str
    code: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


#: What :meth:`OriginPolicy.check` decides.
Decision = Allowed | Preflight | Refused
#: The Host check's outcome: a refusal, or ``None`` and the ``(name, port)`` named.
_HostVerdict = tuple[Refused | None, tuple[str, int | None] | None]
#: Entries of each verdict memo of an :class:`OriginPolicy`.
_MEMO_SIZE = 256

_NO_ORIGIN_GET = Allowed((_VARY_ORIGIN,))
_NO_ORIGIN = Allowed()


# ---------------------------------------------------------------------- policy
class OriginPolicy:
    """Decides which browser requests may reach the server (see the module docstring).

    Build it with :meth:`build` (or :meth:`from_config`) once the port is known.
    """

    def __init__(
        self,
        *,
        origins: Iterable[Origin],
        any_origin: bool,
        hosts: Iterable[str],
        any_host: bool,
        ip_literal_hosts: bool,
    ) -> None:
        #: Every origin allowed besides the ``Host``'s own.
        self.origins = frozenset(origins)
        self.any_origin = any_origin
        #: Every ``Host`` name accepted (normalised as by :func:`parse_host`).
        self.hosts = frozenset(hosts)
        self.any_host = any_host
        #: Whether any IP-literal ``Host`` is accepted (bound to a wildcard address).
        self.ip_literal_hosts = ip_literal_hosts
        # Verdicts by raw Host value and by (Origin, host): nearly every request
        # repeats one of a few, and parsing costs about 2 us a request. Bounded by
        # _MEMO_SIZE (emptied when full), so varied values cannot grow them.
        self._host_memo: dict[bytes, _HostVerdict] = {}
        self._origin_memo: dict[tuple[bytes, tuple[str, int | None] | None], bool] = {}

    @classmethod
    def build(
        cls,
        allow_origin: Iterable[str],
        allow_host: Iterable[str],
        bind_host: str,
        port: int,
    ) -> OriginPolicy:
        """The policy of a server bound to ``bind_host:port`` with these allow lists.

        Raises :class:`ValueError`, naming the flag, for an entry that is neither
        ``*`` nor an origin (``scheme://host[:port]``) or a host name.
        """
        bound = _normal_host(bind_host)
        own_hosts = {_normal_host(host) for host in LOOPBACK_HOSTS}
        if bound not in WILDCARD_ADDRESSES:
            own_hosts.add(bound)
        origins = {Origin("http", host, port) for host in own_hosts}
        any_origin = False
        for entry in allow_origin:
            if entry.strip() == "*":
                any_origin = True
                continue
            origin = parse_origin(entry.strip().removesuffix("/"))
            if origin is None:
                raise ValueError(
                    f"--allow-origin {entry!r} is not an origin: write scheme://host[:port], "
                    "e.g. http://localhost:3000, or '*'"
                )
            origins.add(origin)
        hosts = set(own_hosts)
        any_host = False
        for entry in allow_host:
            if entry.strip() == "*":
                any_host = True
                continue
            name = _config_host(entry)
            if not name:
                raise ValueError(f"--allow-host {entry!r} is not a host name, e.g. mybox.lan")
            hosts.add(name)
        return cls(
            origins=origins,
            any_origin=any_origin,
            hosts=hosts,
            any_host=any_host,
            ip_literal_hosts=bound in WILDCARD_ADDRESSES,
        )

    @classmethod
    def from_config(cls, config: Config, port: int) -> OriginPolicy:
        """The policy for ``config``'s allow lists, listening on ``port``."""
        # ``or ()``: a repeatable flag never given may arrive as None from argparse.
        return cls.build(config.allow_origin or (), config.allow_host or (), config.host, port)

    # ------------------------------------------------------------------ deciding
    def check(self, method: str, headers: Headers, target: str = "") -> Decision:
        """Decide a request from its method, headers (h11's: lower-case names) and
        target (for an absolute-form one's host)."""
        host_values = [value for name, value in headers if name == b"host"]
        refused, host = self._check_host(host_values, target)
        if refused is not None:
            return refused
        origin_values = [value for name, value in headers if name == b"origin"]
        if not origin_values:
            return _NO_ORIGIN_GET if method in ("GET", "HEAD") else _NO_ORIGIN
        if len(origin_values) > 1:
            return Refused(403, "more than one Origin header", code="origin_not_allowed")
        raw = origin_values[0]
        allowed = self._origin_memo.get((raw, host))
        if allowed is None:
            allowed = self.origin_allowed(raw, host)
            _remember(self._origin_memo, (raw, host), allowed)
        if not allowed:
            return Refused(403, _origin_refusal(raw), code="origin_not_allowed")
        cors = ((b"access-control-allow-origin", raw), _VARY_ORIGIN)
        if method == "OPTIONS" and _header(headers, b"access-control-request-method"):
            return Preflight(_preflight_headers(raw, headers))
        return Allowed((*cors, (b"access-control-expose-headers", EXPOSE_HEADERS)))

    def host_allowed(self, name: str) -> bool:
        """Whether ``Host`` name ``name`` (normalised, without the port) is accepted."""
        return (
            self.any_host or name in self.hosts or (self.ip_literal_hosts and _is_ip_literal(name))
        )

    def origin_allowed(self, raw: bytes, host: tuple[str, int | None] | None) -> bool:
        """Whether ``Origin: raw`` may use a server reached as ``host`` (``(name, port)``)."""
        if self.any_origin:
            return True
        try:
            origin = parse_origin(raw.decode("ascii"))
        except UnicodeDecodeError:
            return False
        if origin is None:  # "null", or not an origin at all
            return False
        return origin in self.origins or _same_as_host(origin, host)

    def _check_host(self, values: list[bytes], target: str) -> _HostVerdict:
        """A refusal, or ``None`` and the ``(name, port)`` the request was sent to."""
        if len(values) > 1:
            return Refused(400, "more than one Host header", code="invalid_host"), None
        if target[:1] not in ("/", "*", "") and target.lower().startswith(("http://", "https://")):
            authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
            return self._host_verdict(authority.rpartition("@")[2])
        if not values:
            return None, None  # HTTP/1.0 without Host: nothing to check
        raw = values[0]
        verdict = self._host_memo.get(raw)
        if verdict is None:
            try:
                verdict = self._host_verdict(raw.decode("ascii"))
            except UnicodeDecodeError:
                verdict = Refused(400, "the Host header is not valid", code="invalid_host"), None
            _remember(self._host_memo, raw, verdict)
        return verdict

    def _host_verdict(self, text: str) -> _HostVerdict:
        host = parse_host(text)
        if host is None:
            return Refused(400, f"the Host {text!r} is not valid", code="invalid_host"), None
        name = host[0]
        if not name:
            # RFC 9110 section 4.2.1: "A sender MUST NOT generate an "http" URI with
            # an empty host identifier."
            return Refused(400, "the Host header names no host", code="invalid_host"), None
        if not self.host_allowed(name):
            return (
                Refused(
                    421,
                    f"this server does not answer to the name {name!r} (a web page may be "
                    f"using DNS rebinding); to allow it, start the server with "
                    f"--allow-host {name}",
                    code="host_not_allowed",
                ),
                None,
            )
        return None, host


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value


def _origin_refusal(raw: bytes) -> str:
    """The message of a 403 for ``Origin: raw``, naming the flag that would allow it."""
    if raw == b"null":
        return (
            "requests from a page without an origin of its own (Origin: null: a sandboxed "
            "frame, a file: page) are not allowed here; only --allow-origin '*' allows them"
        )
    shown = raw.decode("ascii", "replace")
    return (
        f"requests from the web page at {shown} are not allowed here; to allow that "
        f"origin, start the server with --allow-origin {shown}"
    )


def _config_host(entry: str) -> str | None:
    """The name of an ``--allow-host`` entry, which may be a bare IPv6 address."""
    entry = entry.strip()
    if entry.count(":") > 1 and not entry.startswith("["):
        entry = f"[{entry}]"
    host = parse_host(entry)
    return host[0] if host is not None else None


def _same_as_host(origin: Origin, host: tuple[str, int | None] | None) -> bool:
    """Whether ``origin`` is the web origin of the ``Host`` the request was sent to.

    A ``Host`` without a port means the default port of the origin's scheme (behind
    a TLS proxy the page is ``https://name`` and the ``Host`` is ``name``).
    """
    if host is None or origin.scheme not in ("http", "https") or origin.host != host[0]:
        return False
    port = host[1] if host[1] is not None else DEFAULT_PORTS[origin.scheme]
    return origin.port == port


def _header(headers: Headers, name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _preflight_headers(raw_origin: bytes, headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """The answer to an allowed preflight (Fetch standard, "HTTP responses").

    The browser, not the server, compares the request against these lists. Every
    header name the preflight asks for is allowed if it is a valid token: the origin
    is trusted, so which headers its page sends is its own business (the ``openai``
    JavaScript SDK sends a dozen ``x-stainless-*`` ones).
    """
    names = list(ALLOW_HEADERS)
    for key, value in headers:
        if key == b"access-control-request-headers":
            for item in value.decode("latin-1").split(","):
                item = item.strip().lower()
                if _TOKEN.fullmatch(item) and item not in names:
                    names.append(item)
    out = [
        (b"access-control-allow-origin", raw_origin),
        (b"access-control-allow-methods", ALLOW_METHODS),
        (b"access-control-allow-headers", ", ".join(names).encode("ascii")),
        (b"access-control-max-age", str(MAX_AGE).encode()),
        (b"vary", b"origin, access-control-request-method, access-control-request-headers"),
    ]
    if _header(headers, b"access-control-request-private-network") == b"true":
        # Chromium's Private Network Access: a public page asking for a loopback
        # or private address must be let in explicitly; this origin is allowed.
        out.append((b"access-control-allow-private-network", b"true"))
    return tuple(out)
