"""How numbers read in build output (issue 23): "1 picture", decimal sizes, estimates in
words that never say "0 min"."""

from __future__ import annotations

import pytest

from core.sources.units import format_duration, format_seconds, format_size, plural


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0 pictures"), (1, "1 picture"), (2, "2 pictures"), (40_504, "40,504 pictures")],
)
def test_a_count_agrees_with_its_noun(count: int, expected: str) -> None:
    assert plural(count, "picture") == expected


def test_an_irregular_plural() -> None:
    assert [plural(n, "entry", "entries") for n in (1, 3)] == ["1 entry", "3 entries"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, "1 byte"),
        (999, "999 bytes"),
        (1_000, "1.0 kB"),
        (34_800, "34.8 kB"),
        (241_000_000, "241.0 MB"),
        (6_645_013_297, "6.6 GB"),
    ],
)
def test_sizes_are_decimal(size: int, expected: str) -> None:
    assert format_size(size) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "under a minute"),
        (0.8, "under a minute"),
        (59, "under a minute"),
        (60, "about 1 min"),
        (40_504 / 29, "about 23 min"),
        (3_600, "about 1 h"),
        (4_003, "about 1 h 7 min"),
    ],
)
def test_an_estimate_reads_in_words(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.04, "0.0 s"), (12.34, "12.3 s"), (243, "4 min 3 s"), (3_725, "1 h 2 min")],
)
def test_a_time_taken(seconds: float, expected: str) -> None:
    assert format_seconds(seconds) == expected
