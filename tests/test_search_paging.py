"""Paging through a search as the bot and inline mode do (`SearchService.page`): every page
full until the results really end, however many near-duplicates or refused files the
ranking drops on the way; how many results there are, once that is known; a Similar search
without its own picture; and what is not a search at all (invisible or symbol-only texts)."""

from __future__ import annotations

import itertools

import pytest

from core.errors import EmptyQuery
from core.search import ranking
from core.search.query import has_real_tokens
from core.search.service import (
    SYMBOLS_NOTE,
    PreparedQuery,
    Query,
    SearchPage,
    SearchService,
    shown_score,
)
from tests.conftest import TINY_CLIP, TINY_SIGLIP, ShapeIndex

CLUSTERED = 0.995
"""A DUPLICATE_COSINE at which the fixture CLIP folds most pictures of one colour and shape
together (its 32-d space puts them at cosine ~0.99): most neighbours fetched are dropped."""


@pytest.fixture(scope="module")
def clustered(shape_index: ShapeIndex) -> SearchService:
    settings = shape_index.settings.model_copy(update={"duplicate_cosine": CLUSTERED})
    return SearchService.open(settings)


def all_pages(service: SearchService, prepared: PreparedQuery, k: int) -> list[SearchPage]:
    """Every page of `prepared`, as More (or inline mode's next offset) walks them."""
    pages = [service.page(prepared, k)]
    while pages[-1].more:
        pages.append(service.page(prepared, k, offset=pages[-1].offset + k))
    return pages


@pytest.mark.parametrize("text", ["a red circle", "a blue square", "a yellow triangle"])
def test_pages_are_full_until_the_results_really_end(clustered: SearchService, text: str) -> None:
    prepared = clustered.prepare(Query(text=text))
    everything = clustered.page(prepared, 200)
    assert not everything.more and everything.found == len(everything.hits)
    assert len(everything.hits) > 15  # the old depth (end + k + 5) stopped at the 3rd page
    pages = all_pages(clustered, prepared, 5)
    assert [h.id for p in pages for h in p.hits] == [h.id for h in everything.hits]
    assert all(len(p.hits) == 5 for p in pages[:-1]) and 1 <= len(pages[-1].hits) <= 5
    assert pages[-1].found == len(everything.hits)
    assert pages[0].found is None  # only 16 of the 60 fetched: how many in all is not known


def test_inline_pages_of_ten_are_the_button_pages_of_five(clustered: SearchService) -> None:
    prepared = clustered.prepare(Query(text="a green circle"))
    fives = [h.id for p in all_pages(clustered, prepared, 5) for h in p.hits]
    tens = [h.id for p in all_pages(clustered, prepared, 10) for h in p.hits]
    assert tens == fives


def test_the_fetch_grows_only_as_far_as_needed(clustered: SearchService, monkeypatch) -> None:
    asked: list[int] = []
    query = clustered.store.query

    def spy(vectors, k, **kwargs):
        asked.append(k)
        return query(vectors, k, **kwargs)

    monkeypatch.setattr(clustered.store, "query", spy)
    prepared = clustered.prepare(Query(text="a red circle"))
    clustered.page(prepared, 5)
    assert asked[0] == ranking.FIRST_FETCH
    assert all(b == 2 * a for a, b in itertools.pairwise(asked))
    asked.clear()
    clustered.page(prepared, 200)
    assert asked and max(asked) <= clustered.store.count()  # never past the collection


def test_min_score_ends_the_results_without_fetching_everything(
    shape_index: ShapeIndex, monkeypatch
) -> None:
    service = SearchService.open(shape_index.settings.model_copy(update={"min_score": 0.5}))
    asked: list[int] = []
    query = service.store.query
    monkeypatch.setattr(
        service.store, "query", lambda v, k, **kw: asked.append(k) or query(v, k, **kw)
    )
    page = service.page(service.prepare(Query(text="a red circle")), 5)
    assert page.found is not None and page.found == len(page.hits) <= 5
    assert all(hit.score >= 0.5 for hit in page.hits)
    assert asked == [ranking.FIRST_FETCH]  # the 16th neighbour scored below: nothing beyond can


def test_a_similar_search_never_shows_its_own_picture(
    clustered: SearchService, shape_index: ShapeIndex
) -> None:
    image = shape_index.images[4]
    prepared = clustered.prepare(Query(like_id=str(image.id)))
    assert prepared.exclude == (str(image.id),)
    restored = PreparedQuery.from_json(prepared.to_json())  # as the buttons keep it
    assert restored.exclude == prepared.exclude
    pages = all_pages(clustered, restored, 3)
    ids = [h.id for p in pages for h in p.hits]
    assert ids and str(image.id) not in ids and len(ids) == len(set(ids))
    assert pages[-1].found == len(ids)


def test_a_kept_search_from_before_reads_without_exclude() -> None:
    old = '{"vector": [1.0], "categories": [], "reading": "x", "min_score": null}'
    assert PreparedQuery.from_json(old).exclude == ()


@pytest.mark.parametrize(
    "text",
    [
        "...",
        "\N{ZERO WIDTH SPACE}",
        "\N{ZERO WIDTH SPACE}\N{ZERO WIDTH JOINER}\N{INVISIBLE SEPARATOR}",
        "\N{SOFT HYPHEN}",
        "?! …",
        "🙂",
        "🙂 🙂",
        "‼️",
        "+",
        "#",
        "- ...",
    ],
)
def test_nothing_to_search_is_not_a_search(clustered: SearchService, text: str) -> None:
    with pytest.raises(EmptyQuery, match="nothing to search for"):
        clustered.prepare(Query(text=text))
    [error] = clustered.prepare_texts([text], return_errors=True)
    assert isinstance(error, EmptyQuery)


def test_invisible_characters_do_not_change_the_words(clustered: SearchService) -> None:
    plain = clustered.prepare(Query(text="a red circle"))
    hidden = clustered.prepare(Query(text="a\N{ZERO WIDTH SPACE}red circle\N{SOFT HYPHEN}"))
    assert hidden.reading == "a red circle" and hidden.vector == plain.vector
    assert clustered.prepare(Query(text="a red circle 🙂")).reading == "a red circle 🙂"


def test_an_emoji_is_searched_when_the_model_has_tokens_for_it(
    clustered: SearchService, monkeypatch
) -> None:
    """The fixture CLIP spells 🙂 byte by byte (no token of its own): not a search. A model
    whose tokenizer knows the emoji (the real CLIP's vocabulary holds many) searches it, and
    the reading says that only an emoji was searched."""
    monkeypatch.setattr("core.search.service.has_real_tokens", lambda tokenizer, text: True)
    prepared = clustered.prepare(Query(text="🙂"))
    assert prepared.reading == "🙂" + SYMBOLS_NOTE
    assert clustered.page(prepared, 3).hits
    assert clustered.prepare(Query(text="🙂 + a red circle")).reading == "a red circle + 🙂"


class FakeTokenizer:
    """A tokenizer with one token for 🐶, bytes for anything else, and an unknown token."""

    unk_token_id = 0

    def __call__(self, text: str, *, add_special_tokens: bool) -> dict[str, list[int]]:
        if text == "🐶":
            return {"input_ids": [5]}
        if text == "?":
            return {"input_ids": [0]}
        return {"input_ids": [9] * len(text.encode())}

    def decode(self, token_ids: list[int]) -> str:
        return {5: "🐶", 0: "<unk>"}.get(token_ids[0], "\ufffd")


def test_real_tokens_are_neither_unknown_nor_bytes() -> None:
    from transformers import AutoTokenizer

    tokenizer = FakeTokenizer()
    assert has_real_tokens(tokenizer, "🐶")
    assert not has_real_tokens(tokenizer, "🙂") and not has_real_tokens(tokenizer, "?")
    clip = AutoTokenizer.from_pretrained(str(TINY_CLIP))  # byte-level BPE: 4 byte pieces
    assert has_real_tokens(clip, "circle") and not has_real_tokens(clip, "🙂")
    siglip = AutoTokenizer.from_pretrained(str(TINY_SIGLIP))  # sentencepiece: nothing, or unk
    assert has_real_tokens(siglip, "circle") and not has_real_tokens(siglip, "🙂")
    assert not has_real_tokens(siglip, "❤️")


@pytest.mark.parametrize(
    ("score", "shown"),
    [
        (0.31234, "0.31"),
        (0.999, "1.00"),
        (1.0000001, "1.00"),
        (0.0, "0.00"),
        (-0.001, "0.00"),
        (-0.004, "0.00"),
        (-0.6, "0.00"),
        (0.056, "0.06"),
    ],
)
def test_scores_are_shown_never_negative(score: float, shown: str) -> None:
    assert shown_score(score) == shown


def test_found_is_the_number_of_results_not_of_pictures(clustered: SearchService) -> None:
    page = clustered.page(clustered.prepare(Query(text="a red circle")), 200)
    assert page.total == 60 and page.found == len(page.hits) < 60
