"""Routing: from a method and a path to an endpoint name and its parameters.

Routes are a table of ``(method, pattern, name)``. A pattern is a path whose
segments are either literal or ``{param}`` (one non-empty segment). Matching is
exact: no trailing-slash folding, no prefixes. The outcome tells the server what
to answer when nothing matches: 404 when no pattern matches the path, 405 (with
the ``Allow`` header of RFC 9110 section 15.5.6) when the path matches with
another method. ``HEAD`` is accepted wherever ``GET`` is (RFC 9110 section 9.3.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the routing table."""

    method: str
    pattern: str
    name: str
    #: Whether callers must authenticate (the web page and /health do not).
    public: bool = False
    segments: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.pattern.strip("/").split("/")))

    def match_path(self, parts: tuple[str, ...]) -> dict[str, str] | None:
        """The parameters if ``parts`` (the path's segments) match, else ``None``."""
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


@dataclass(frozen=True, slots=True)
class Match:
    """A route matched."""

    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class NoMatch:
    """Nothing matched: 404, or 405 with the methods that would have."""

    status: int
    allow: tuple[str, ...] = ()


class Router:
    """A routing table (see the module docstring)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)

    def match(self, method: str, path: str) -> Match | NoMatch:
        """Find the route for ``method`` and ``path``."""
        # Exact: "/v1/models/" has an empty last segment and "//health" an empty
        # first one, so neither matches "/v1/models" or "/health" (no folding).
        parts = tuple(path[1:].split("/")) if path.startswith("/") else (path,)
        allowed: list[str] = []
        for route in self.routes:
            params = route.match_path(parts)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return Match(route, params)
            allowed.append(route.method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            return NoMatch(405, tuple(dict.fromkeys(allowed)))
        return NoMatch(404)
