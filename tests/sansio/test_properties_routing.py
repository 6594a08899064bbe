"""Properties of routing (rawstream.sansio.routing) on generated tables and paths.

The module's contract: exact matching (no trailing-slash folding, no prefixes),
``{param}`` is one non-empty segment, 405 with ``Allow`` when only the method is
wrong (``HEAD`` allowed wherever ``GET`` is), 404 otherwise.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from rawstream.app.application import ROUTES
from rawstream.sansio.routing import Match, NoMatch, Route, Router

METHODS = ["GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS", "PATCH"]
literals = st.sampled_from(["v1", "models", "ws", "a", "b", "health", "events"])
segments = st.one_of(literals, st.none())  # None: a parameter
patterns = st.lists(segments, min_size=1, max_size=4).map(
    lambda s: "/" + "/".join(f"{{p{i}}}" if seg is None else seg for i, seg in enumerate(s))
)
routes = st.builds(Route, st.sampled_from(["GET", "POST", "DELETE"]), patterns, st.just("r"))
tables = st.lists(routes, min_size=1, max_size=6).map(
    lambda rs: [Route(r.method, r.pattern, f"r{i}") for i, r in enumerate(rs)]
)
param_values = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8)


@st.composite
def path_for(draw: st.DrawFn, route: Route) -> tuple[str, dict[str, str]]:
    """A path that the route's pattern matches, and the parameters it carries."""
    parts, params = [], {}
    for segment in route.segments:
        if segment.startswith("{"):
            value = draw(param_values)
            params[segment[1:-1]] = value
            parts.append(value)
        else:
            parts.append(segment)
    return "/" + "/".join(parts), params


def segments_match(route: Route, path: str) -> bool:
    """Reference: does ``path`` (exactly) fit the route's pattern?"""
    if not path.startswith("/"):
        return False
    got = path[1:].split("/")
    if len(got) != len(route.segments):
        return False
    return all(
        (want.startswith("{") and bool(part)) or want == part
        for want, part in zip(route.segments, got, strict=True)
    )


@given(tables, st.data())
def test_a_path_built_from_a_pattern_is_routed_by_the_reference(
    table: list[Route], data: st.DataObject
) -> None:
    route = data.draw(st.sampled_from(table))
    path, _ = data.draw(path_for(route))
    method = data.draw(st.sampled_from(METHODS))
    outcome = Router(table).match(method, path)
    fits = [r for r in table if segments_match(r, path)]
    wanted = [r for r in fits if r.method == method or (method == "HEAD" and r.method == "GET")]
    if wanted:
        assert isinstance(outcome, Match) and outcome.route == wanted[0]
        rebuilt = "/".join(
            outcome.params[s[1:-1]] if s.startswith("{") else s for s in outcome.route.segments
        )
        assert "/" + rebuilt == path
    else:
        allow = list(dict.fromkeys(r.method for r in fits))
        if "GET" in allow:
            allow.append("HEAD")
        assert outcome == NoMatch(405, tuple(allow))


@given(tables, st.data(), st.sampled_from(["/", "//", "/x"]), st.sampled_from(["pre", "post"]))
def test_matching_is_exact_no_slash_folding_no_prefixes(
    table: list[Route], data: st.DataObject, extra: str, where: str
) -> None:
    route = data.draw(st.sampled_from(table))
    path, _ = data.draw(path_for(route))
    changed = path + extra if where == "post" else extra.rstrip("/") + "/" + path
    assume(not any(segments_match(r, changed) for r in table))
    outcome = Router(table).match(route.method, changed)
    assert outcome == NoMatch(404), f"{changed!r} was routed to {outcome}"


@given(st.sampled_from(METHODS) | st.text(max_size=8), st.text(max_size=40))
def test_any_method_and_path_get_a_match_404_or_405(method: str, path: str) -> None:
    outcome = Router(ROUTES).match(method, path)
    if isinstance(outcome, NoMatch):
        assert outcome.status in (404, 405)
        assert (outcome.status == 405) == bool(outcome.allow)
        assert len(set(outcome.allow)) == len(outcome.allow)
        assert method not in outcome.allow
    else:
        assert outcome.route.method == method or (method, outcome.route.method) == ("HEAD", "GET")
        assert all(outcome.params.values())


@given(st.sampled_from([r for r in ROUTES if "{" in r.pattern]), st.sampled_from(["", "/"]))
def test_an_empty_parameter_never_matches(route: Route, tail: str) -> None:
    path = route.pattern.replace("{id}", "").replace("{name}", "") + tail
    outcome = Router(ROUTES).match(route.method, path)
    assert not (isinstance(outcome, Match) and outcome.route == route), path
