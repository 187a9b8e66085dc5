"""Stop strings: found where a character-by-character check finds them, held back until decided, and
only a suffix shorter than the longest stop string is ever kept."""

from __future__ import annotations

import random

import pytest

from mili.worker.engine.stop_checker import StopStrings, failure_table


def character_by_character(pieces: list[str], stops: list[str], include: bool) -> tuple[str, str | None]:
    """The reference: after every character, does the text end with a stop string (longest wins)?"""
    text = ""
    for char in "".join(pieces):
        text += char
        ended = [stop for stop in stops if text.endswith(stop)]
        if ended:
            stop = max(ended, key=len)
            return (text if include else text[: -len(stop)]), stop
    return text, None


def run(pieces: list[str], stops: list[str], include: bool) -> tuple[str, str | None, list[str]]:
    matcher = StopStrings(stops, include).matcher()
    shown = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        shown.append(text)
        if stop is not None:
            return "".join(shown), stop, shown
    shown.append(matcher.release())
    return "".join(shown), None, shown


def test_failure_table_is_knuth_morris_pratt():
    assert failure_table("abab") == [0, 0, 1, 2]
    assert failure_table("aabaaab") == [0, 1, 0, 1, 2, 2, 3]


@pytest.mark.parametrize("seed", range(4))
def test_random_texts_stop_where_the_character_check_stops(seed):
    rng = random.Random(seed)
    for _ in range(1500):
        stops = [
            "".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))
        ]
        pieces = [
            "".join(rng.choice("abc") for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 10))
        ]
        include = rng.random() < 0.5
        text, stop, _ = run(pieces, stops, include)
        assert (text, stop) == character_by_character(pieces, stops, include), (stops, pieces, include)


def test_text_that_could_begin_a_stop_string_is_held_back_until_decided():
    _, _, shown = run(["Hello, wor", "ld", "!"], ["world!!"], include=False)
    assert shown == ["Hello, ", "", "", "world!"]  # held while "wor…" could still become the stop


def test_only_a_short_suffix_is_kept_however_long_the_text():
    stops = ["a" * 1023 + chr(0x4E00 + i) for i in range(64)]  # the most a request may ask for
    matcher = StopStrings(stops).matcher()
    shown = 0
    for _ in range(5000):  # every character could still begin all 64 stop strings
        text, stop = matcher.feed("aaa")
        shown += len(text)
        assert stop is None and len(matcher.held) <= 1023
    assert shown + len(matcher.held) == 15000 and matcher.held == "a" * 1023
