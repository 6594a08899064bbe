"""Incremental UTF-8 decoding and stop-string holdback, without a model."""

from __future__ import annotations

import random

import pytest

from rawstream.engine.detok import Detokenizer, StopMatcher, Utf8Decoder


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    out = [matcher.feed(p) for p in pieces]
    if not matcher.stopped:
        out.append(matcher.flush())
    return out, matcher.stopped


# --- UTF-8 ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["🙂", "你好", "naïve", "a🙂b你c", "𝄞"])
def test_utf8_split_at_every_byte_never_breaks_a_character(text: str) -> None:
    data = text.encode()
    for cut in range(len(data) + 1):
        decoder = Utf8Decoder()
        first, second = decoder.decode(data[:cut]), decoder.decode(data[cut:])
        assert "\ufffd" not in first + second
        assert first + second == text
        assert not decoder.pending


def test_utf8_one_byte_at_a_time() -> None:
    decoder = Utf8Decoder()
    out = [decoder.decode(bytes([b])) for b in "🙂".encode()]
    assert out == ["", "", "", "🙂"]


def test_utf8_pending_flag() -> None:
    decoder = Utf8Decoder()
    decoder.decode("你".encode()[:2])
    assert decoder.pending


def test_utf8_invalid_bytes_become_replacement_characters() -> None:
    assert Utf8Decoder().decode(b"a\xffb") == "a\ufffdb"


# --- stop strings: table-driven -------------------------------------------------------

CASES = [
    # (pieces, stops, released pieces, stopped)
    (["Hello", " world"], (), ["Hello", " world", ""], False),
    (["Hello", " wor", "ld", "!"], ("world",), ["Hello", " ", "", ""], True),
    (["ab", "c"], ("bc",), ["a", ""], True),
    (["Hel", "p"], ("Hello",), ["", "Help", ""], False),  # held, then released
    (["x\n", "\nUs", "er: hi"], ("\n\nUser:",), ["x", "", ""], True),
    (["STOP"], ("STOP",), [""], True),
    (["aaa", "ab"], ("aab",), ["a", "a"], True),  # overlapping prefixes
    (["abc"], ("bc", "abcd"), ["a"], True),  # only complete matches count
    (["abc"], ("b", "abc"), ["a"], True),  # the match complete first wins
    (["abc"], ("bc", "abc"), [""], True),  # complete at once: the longer wins
    (["xy"], ("",), ["xy", ""], False),  # an empty stop string is ignored
    (["end", "ing"], ("end.",), ["", "ending", ""], False),
]


@pytest.mark.parametrize(("pieces", "stops", "expected", "stopped"), CASES)
def test_stop_matcher(
    pieces: list[str], stops: tuple[str, ...], expected: list[str], stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    assert feed_all(matcher, pieces) == (expected, stopped)


def test_stop_matcher_releases_nothing_after_stop() -> None:
    matcher = StopMatcher(("x",))
    assert matcher.feed("axb") == "a"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


def test_stop_matcher_holds_only_possible_prefixes() -> None:
    matcher = StopMatcher(("<|end|>",))
    assert matcher.feed("a <|") == "a "
    assert matcher.held == "<|"
    assert matcher.feed("x") == "<|x"
    assert matcher.held == ""


def reference_cut(text: str, stops: tuple[str, ...]) -> str:
    """Check after every character, as if each character were a token."""
    for end in range(1, len(text) + 1):
        hits = [text.find(s) for s in stops if s and s in text[:end]]
        if hits:
            return text[: min(hits)]
    return text


def test_random_splits_match_a_reference() -> None:
    """Any split of the text gives what a character-by-character check gives."""
    rng = random.Random(7)
    alphabet = "ab🙂 \n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        stops = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(0, 3))
        )
        want = reference_cut(text, stops)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out, stopped = feed_all(StopMatcher(stops), pieces)
        assert "".join(out) == want, (text, stops, pieces)
        assert stopped == any(s in text for s in stops)


# --- the detokenizer ------------------------------------------------------------------


def test_detokenizer_counts_held_tokens_into_the_next_piece() -> None:
    detok = Detokenizer()
    emoji = "🙂".encode()
    assert detok.feed(emoji[:2]) is None
    piece = detok.feed(emoji[2:] + b"!")
    assert piece is not None
    assert (piece.text, piece.tokens) == ("🙂!", 2)


def test_detokenizer_stop_string_across_tokens() -> None:
    detok = Detokenizer(("END",))
    pieces = [detok.feed(p) for p in (b"one E", b"N", b"D two")]
    assert [p.text if p else None for p in pieces] == ["one ", None, None]
    assert detok.stopped
    assert detok.finish() is None


def test_detokenizer_finish_releases_an_unfinished_stop_prefix() -> None:
    detok = Detokenizer(("END",))
    assert detok.feed(b"x") is not None
    assert detok.feed(b" EN") is not None  # " " released, "EN" held
    piece = detok.finish()
    assert piece is not None
    assert (piece.text, piece.tokens) == ("EN", 0)  # " EN" counted with " "


def test_detokenizer_finish_drops_an_incomplete_character() -> None:
    detok = Detokenizer()
    assert detok.feed(b"a") is not None
    assert detok.feed("你".encode()[:1]) is None
    assert detok.finish() is None
