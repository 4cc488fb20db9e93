"""The compound query reader and the vector maths (pure: no model, no store)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import EmptyQuery, NoCategories, UnknownCategory
from core.search.query import (
    MINUS_WEIGHT,
    PLUS_WEIGHT,
    ParsedQuery,
    combine,
    has_words,
    hashtag,
    is_symbols,
    parse_query,
    resolve_categories,
    visible,
)

COCO = ("dog", "frisbee", "hot dog", "cell phone", "person", "cat")


@pytest.mark.parametrize(
    ("text", "positives", "negatives", "hashtags"),
    [
        ("a dog on a beach", ["a dog on a beach"], [], []),
        ("a dog on a beach -people", ["a dog on a beach"], ["people"], []),
        ("cat + snow", ["cat", "snow"], [], []),
        ("cat +snow", ["cat", "snow"], [], []),
        ("#dog #frisbee in a park", ["in a park"], [], ["dog", "frisbee"]),
        ("a man in a t-shirt", ["a man in a t-shirt"], [], []),
        ("red -circle", ["red"], ["circle"], []),
        ("red \N{MINUS SIGN}circle", ["red"], ["circle"], []),
        ("red - circle", ["red"], ["circle"], []),
        ('a blue square -"a green square"', ["a blue square"], ["a green square"], []),
        ("a dog -people, at sunset", ["a dog at sunset"], ["people"], []),
        ("-people -cars", [], ["people", "cars"], []),
        ("#Dog #dog", [], [], ["dog"]),
        ("  ", [], [], []),
        ("+ + a cat +", ["a cat"], [], []),
        ("- - -", [], [], []),
        ("#", [], [], []),
        ("...", [], [], []),
        ("?! …", [], [], []),
        ("a red circle ...", ["a red circle ..."], [], []),
        ("\N{ZERO WIDTH SPACE}", [], [], []),
        ("a\N{ZERO WIDTH SPACE}dog", ["a dog"], [], []),
        ("cir\N{SOFT HYPHEN}cle\N{WORD JOINER}", ["circle"], [], []),
        ("red -...", ["red -..."], [], []),  # not a minus term: no word after the -
        ("日本の猫", ["日本の猫"], [], []),
        ("42", ["42"], [], []),
    ],
)
def test_parse(text: str, positives: list, negatives: list, hashtags: list) -> None:
    parsed = parse_query(text)
    assert parsed == ParsedQuery(tuple(positives), tuple(negatives), tuple(hashtags))


@pytest.mark.parametrize(
    ("text", "positives", "symbols"),
    [
        ("🙂", [], ["🙂"]),
        ("🐶 + a beach", ["a beach"], ["🐶"]),
        ("a 🐶 on a beach", ["a 🐶 on a beach"], []),  # words around it: one term, as written
        ("👨\N{ZERO WIDTH JOINER}👩", [], ["👨\N{ZERO WIDTH JOINER}👩"]),
        ("‼", [], []),  # punctuation, not a symbol
    ],
)
def test_symbols_are_kept_apart(text: str, positives: list, symbols: list) -> None:
    parsed = parse_query(text)
    assert (list(parsed.positives), list(parsed.symbols)) == (positives, symbols)


def test_visible_drops_what_nobody_sees() -> None:
    assert visible("a\N{ZERO WIDTH SPACE}b\x00c\N{LEFT-TO-RIGHT MARK}d") == "a b cd"
    assert visible("\N{ZERO WIDTH NON-JOINER}") == "\N{ZERO WIDTH NON-JOINER}"  # Persian needs it
    assert has_words("x") and has_words("٣") and not has_words("…!?")
    assert is_symbols("❤️") and not is_symbols("a ❤️") and not is_symbols("...")


def test_reading_uses_the_minus_sign_and_names_the_filters() -> None:
    parsed = parse_query("a dog on a beach -people #dog")
    assert parsed.reading() == "a dog on a beach \N{MINUS SIGN}people · #dog"
    assert parse_query("cat + snow").reading() == "cat + snow"
    assert parse_query("at night").reading("your photo") == "your photo + at night"
    assert parse_query("-red").reading("your photo") == "your photo \N{MINUS SIGN}red"
    assert parse_query("#hotdog").reading(categories=["hot dog"]) == "#hot_dog"
    assert parse_query('x -"a b"').reading() == 'x \N{MINUS SIGN}"a b"'


def test_weights_are_documented_values() -> None:
    assert (PLUS_WEIGHT, MINUS_WEIGHT) == (1.0, -0.5)


def test_combine_is_the_renormalised_weighted_sum() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 8)).astype(np.float32))
    out = combine([a, b, 3 * c], [1.0, 1.0, -0.5])  # inputs are normalised first
    expected = a + b - 0.5 * c
    assert np.allclose(out, expected / np.linalg.norm(expected), atol=1e-6)
    assert out.dtype == np.float32 and np.isclose(np.linalg.norm(out), 1.0)
    with pytest.raises(EmptyQuery, match="cancel"):
        combine([a, a], [1.0, -1.0])


def test_categories_resolve_in_both_spellings() -> None:
    assert resolve_categories(["dog", "hot_dog", "hotdog", "cellphone"], COCO) == (
        "dog",
        "hot dog",
        "cell phone",
    )
    assert resolve_categories([], ()) == ()
    assert hashtag("cell phone") == "#cell_phone"


def test_unknown_category_suggests_the_closest() -> None:
    with pytest.raises(UnknownCategory) as err:
        resolve_categories(["dgo"], COCO)
    assert str(err.value) == "no category #dgo: did you mean #dog?"
    with pytest.raises(UnknownCategory, match="did you mean #hot_dog"):
        resolve_categories(["hot_dgo"], COCO)
    with pytest.raises(UnknownCategory, match=r"knows 6 categories, e\.g\. #cat"):
        resolve_categories(["zzzzzz"], COCO)


def test_no_categories_on_an_index_without_them() -> None:
    with pytest.raises(NoCategories, match="no categories"):
        resolve_categories(["dog"], ())
