"""Properties of the authentication decision (rawstream.sansio.auth).

For any set of configured keys: a right key is recognised in every place a client may
present it (``Authorization: Bearer``, ``x-api-key``, a ``bearer.<key>`` subprotocol,
``?api_key=``) among any other headers and parameters, and the identity is the first
configured key equal to it; a wrong key is never recognised, wherever it is.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import assume, given
from hypothesis import strategies as st

from rawstream.sansio.auth import ANONYMOUS, Authenticator, Identity

Headers = list[tuple[bytes, bytes]]

#: Keys that may travel in a header: no line break, NUL or surrounding whitespace.
header_keys = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\0"), min_size=1, max_size=24
).filter(lambda k: k.encode() == k.encode().strip())
#: Keys that may travel as a subprotocol (RFC 6455 section 4.1 token characters).
subprotocol_keys = st.from_regex(r"[A-Za-z0-9._~-]{1,24}", fullmatch=True)
#: Any key: the query string percent-encodes it.
query_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24)

noise_headers = st.lists(
    st.tuples(
        st.sampled_from([b"host", b"x-other-key", b"cookie", b"sec-websocket-protocol"]),
        st.sampled_from([b"x", b"rawstream", b"chat, superchat", b"bearer.", b""]),
    ),
    max_size=3,
)
noise_query = st.lists(
    st.tuples(st.sampled_from(["last_event_id", "q", "API_KEY", "apikey"]), st.text(max_size=6)),
    max_size=3,
)


def bearer(key: str, scheme: str = "Bearer", spaces: int = 1) -> tuple[bytes, bytes]:
    return b"authorization", f"{scheme}{' ' * spaces}{key}".encode()


def subprotocol(key: str, before: list[str]) -> tuple[bytes, bytes]:
    return b"sec-websocket-protocol", ", ".join([*before, "bearer." + key]).encode()


def query(key: str, noise: list[tuple[str, str]]) -> str:
    parts = [f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in noise]
    return "&".join([*parts, "api_key=" + quote(key, safe="")])


def noise_only(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params)


def expected_identity(keys: list[str], key: str) -> Identity:
    return Identity(f"key-{keys.index(key)}")


@given(
    st.lists(header_keys, min_size=1, max_size=4),
    st.data(),
    st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    st.integers(1, 3),
    noise_headers,
    noise_query,
)
def test_a_right_key_in_the_authorization_header_is_recognised(
    keys: list[str],
    data: st.DataObject,
    scheme: str,
    spaces: int,
    noise: Headers,
    params: list[tuple[str, str]],
) -> None:
    key = data.draw(st.sampled_from(keys))
    headers = data.draw(st.permutations([*noise, bearer(key, scheme, spaces)]))
    identity = Authenticator(keys).authenticate(headers, noise_only(params))
    assert identity == expected_identity(keys, key)


@given(st.lists(header_keys, min_size=1, max_size=4), st.data(), noise_headers, noise_query)
def test_a_right_key_in_x_api_key_is_recognised(
    keys: list[str], data: st.DataObject, noise: Headers, params: list[tuple[str, str]]
) -> None:
    key = data.draw(st.sampled_from(keys))
    headers = data.draw(st.permutations([*noise, (b"x-api-key", key.encode())]))
    identity = Authenticator(keys).authenticate(headers, noise_only(params))
    assert identity == expected_identity(keys, key)


@given(
    st.lists(subprotocol_keys, min_size=1, max_size=4),
    st.data(),
    st.lists(st.sampled_from(["rawstream", "chat", "bearer."]), max_size=2),
    noise_headers,
)
def test_a_right_key_as_a_subprotocol_is_recognised(
    keys: list[str], data: st.DataObject, before: list[str], noise: Headers
) -> None:
    key = data.draw(st.sampled_from(keys))
    headers = data.draw(st.permutations([*noise, subprotocol(key, before)]))
    assert Authenticator(keys).authenticate(headers) == expected_identity(keys, key)


@given(st.lists(query_keys, min_size=1, max_size=4), st.data(), noise_headers, noise_query)
def test_a_right_key_in_the_query_is_recognised(
    keys: list[str], data: st.DataObject, noise: Headers, params: list[tuple[str, str]]
) -> None:
    key = data.draw(st.sampled_from(keys))
    assert Authenticator(keys).authenticate(noise, query(key, params)) == (
        expected_identity(keys, key)
    )


@given(
    st.lists(subprotocol_keys, min_size=1, max_size=3),
    st.data(),
    st.sampled_from(["header", "x-api-key", "subprotocol", "query"]),
)
def test_the_first_place_with_a_right_key_decides(
    keys: list[str], data: st.DataObject, first: str
) -> None:
    # A right key in an earlier place wins over another right key later on.
    a, b = data.draw(st.sampled_from(keys)), data.draw(st.sampled_from(keys))
    auth = Authenticator(keys)
    if first == "header":
        x_api_key = (b"x-api-key", b.encode())
        identity = auth.authenticate([subprotocol(b, []), x_api_key, bearer(a)], query(b, []))
    elif first == "x-api-key":
        identity = auth.authenticate([subprotocol(b, []), (b"x-api-key", a.encode())], query(b, []))
    elif first == "subprotocol":
        identity = Authenticator(keys).authenticate([subprotocol(a, [])], query(b, []))
    else:
        identity = Authenticator(keys).authenticate([bearer("wrong" + a)], query(a, []))
    assert identity == expected_identity(keys, a)


@st.composite
def wrong_keys(draw: st.DrawFn, keys: list[str]) -> str:
    """A key that is not configured: often a near miss of one that is."""
    key = draw(st.sampled_from(keys))
    candidate = draw(
        st.one_of(
            st.just(key[:-1]),
            st.just(key + draw(subprotocol_keys)),
            st.just(draw(subprotocol_keys) + key),
            st.just(key.swapcase()),
            subprotocol_keys,
        )
    )
    assume(candidate and candidate not in keys)
    return candidate


@given(st.lists(subprotocol_keys, min_size=1, max_size=4), st.data(), noise_headers, noise_query)
def test_a_wrong_key_is_never_recognised_anywhere(
    keys: list[str], data: st.DataObject, noise: Headers, params: list[tuple[str, str]]
) -> None:
    wrong = data.draw(wrong_keys(keys))
    headers = [*noise, bearer(wrong), (b"x-api-key", wrong.encode())]
    headers.append(subprotocol(wrong, ["rawstream"]))
    headers = data.draw(st.permutations(headers))
    assert Authenticator(keys).authenticate(headers, query(wrong, params)) is None


@given(st.lists(subprotocol_keys, min_size=1, max_size=3), st.data())
def test_a_right_key_in_the_wrong_place_is_not_recognised(
    keys: list[str], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(keys))
    elsewhere: Headers = [
        (b"api-key", key.encode()),
        (b"x-api-key", b""),
        (b"authorization", b"Basic " + key.encode()),
        (b"authorization", key.encode()),
        (b"authorization", b"Bearer"),
        (b"sec-websocket-protocol", key.encode()),
        (b"sec-websocket-protocol", b"token." + key.encode()),
        (b"cookie", b"api_key=" + key.encode()),
    ]
    headers = data.draw(st.permutations(elsewhere))
    params = f"API_KEY={quote(key)}&key={quote(key)}&api_key="
    assert Authenticator(keys).authenticate(headers, params) is None


@given(noise_headers, st.text(max_size=30))
def test_without_keys_everyone_is_anonymous(headers: Headers, params: str) -> None:
    assert Authenticator([]).authenticate(headers, params) is ANONYMOUS


@given(
    st.lists(subprotocol_keys, min_size=1, max_size=3),
    st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=40)), max_size=5),
    st.text(max_size=40),
)
def test_arbitrary_headers_and_query_never_raise(
    keys: list[str], headers: Headers, params: str
) -> None:
    identity = Authenticator(keys).authenticate(headers, params)
    assert identity is None or identity.tenant.startswith("key-")
