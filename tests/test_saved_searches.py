"""bot.saved_searches: the search contexts behind buttons (LRU, TTL, persistence) and the
callback data they travel as (≤ 64 bytes, parsed defensively)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bot.saved_searches import (
    CALLBACK_DATA_LIMIT,
    MAX_ALBUMS,
    TOKEN_CHARS,
    Album,
    Press,
    SearchContext,
    SearchContexts,
    Shown,
    new_token,
    parse_press,
)
from core.search.service import PreparedQuery

QUERY = PreparedQuery(vector=(0.6, 0.8), categories=("dog",), reading="a dog −people · #dog")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def context(**changes: object) -> SearchContext:
    values: dict[str, object] = {"query": QUERY.to_json(), "chat_id": 5, "user_id": 5, "k": 5}
    values.update(changes)
    return SearchContext(**values)


def album(number: int, first_rank: int = 1, n: int = 3) -> Album:
    pictures = tuple(Shown(f"id{number}-{i}", f"/data/{number}/{i}.jpg") for i in range(n))
    return Album(number, first_rank, pictures)


def test_a_context_round_trips(tmp_path: Path) -> None:
    store = SearchContexts(tmp_path / "s.sqlite3")
    saved = (
        context(offset=5, more=True, nearest_anyway=True)
        .with_album(album(0))
        .with_album(album(1, 6))
    )
    store.put(saved)
    loaded = store.get(saved.token)
    assert loaded == saved
    assert loaded.prepared == QUERY
    assert loaded.album(1).pictures[2] == Shown("id1-2", "/data/1/2.jpg")
    assert loaded.next_album == 2
    assert store.get("A" * TOKEN_CHARS) is None


def test_a_similar_search_keeps_where_it_came_from(tmp_path: Path) -> None:
    store = SearchContexts(tmp_path / "s.sqlite3")
    like = replace(QUERY, exclude=("id0-1",))
    saved = context(query=like.to_json(), likes=(2, 4))
    store.put(saved)
    loaded = store.get(saved.token)
    assert loaded == saved and loaded.likes == (2, 4)
    assert loaded.prepared.exclude == ("id0-1",)
    body = json.loads(saved.body())
    del body["likes"]  # a search saved before Similar searches kept their context
    old = SearchContext.from_row("B" * TOKEN_CHARS, 5, 5, json.dumps(body))
    assert old.likes == ()


def test_only_the_latest_albums_are_kept() -> None:
    c = context()
    for n in range(MAX_ALBUMS + 3):
        c = c.with_album(album(n))
    assert len(c.albums) == MAX_ALBUMS
    assert c.album(0) is None and c.album(MAX_ALBUMS + 2) is not None
    assert c.next_album == MAX_ALBUMS + 3


def test_the_store_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    clock = Clock()
    store = SearchContexts(tmp_path / "s.sqlite3", max_contexts=3, clock=clock)
    contexts = [context() for _ in range(4)]
    for c in contexts[:3]:
        clock.now += 1
        store.put(c)
    clock.now += 1
    assert store.get(contexts[0].token) is not None  # used: now the most recent
    clock.now += 1
    store.put(contexts[3])
    assert len(store) == 3
    assert store.get(contexts[1].token) is None  # the least recently used went
    assert all(store.get(c.token) is not None for c in (contexts[0], contexts[2], contexts[3]))


def test_one_user_cannot_push_everyone_elses_searches_out(tmp_path: Path) -> None:
    clock = Clock()
    store = SearchContexts(tmp_path / "s.sqlite3", max_contexts=10, max_per_user=3, clock=clock)
    earlier = context(user_id=7, chat_id=7)
    store.put(earlier)
    flood = [context(user_id=5) for _ in range(20)]
    for c in flood:
        clock.now += 1
        store.put(c)
    assert store.get(earlier.token) == earlier  # the other user's search still resolves
    assert len(store) == 4
    kept = [c for c in flood if store.get(c.token) is not None]
    assert kept == flood[-3:]  # the flooding user's own oldest went


def test_a_users_share_counts_their_least_recently_used_first(tmp_path: Path) -> None:
    clock = Clock()
    store = SearchContexts(tmp_path / "s.sqlite3", max_per_user=2, clock=clock)
    first, second, third = context(), context(), context()
    for c in (first, second):
        clock.now += 1
        store.put(c)
    clock.now += 1
    assert store.get(first.token) is not None  # used: now their most recent
    store.put(third)
    assert store.get(second.token) is None
    assert store.get(first.token) is not None and store.get(third.token) is not None


def test_contexts_expire_after_the_ttl_since_their_last_use(tmp_path: Path) -> None:
    clock = Clock()
    store = SearchContexts(tmp_path / "s.sqlite3", ttl_s=100, clock=clock)
    kept, dropped = context(), context()
    store.put(kept)
    store.put(dropped)
    clock.now += 60
    assert store.get(kept.token) is not None  # a use restarts its clock
    clock.now += 60
    assert store.get(dropped.token) is None
    assert store.get(kept.token) is not None
    clock.now += 101
    store.put(context())  # a write sweeps what expired
    assert len(store) == 1


def test_contexts_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SearchContexts(path)
    saved = context(offset=10, more=True).with_album(album(2, 11))
    store.put(saved)
    store.close()
    reopened = SearchContexts(path)
    assert reopened.get(saved.token) == saved


def test_an_unreadable_row_is_as_good_as_expired(tmp_path: Path) -> None:
    store = SearchContexts(tmp_path / "s.sqlite3")
    saved = context()
    store.put(saved)
    store._db.execute("UPDATE searches SET body = '{\"query\": 1}'")
    assert store.get(saved.token) is None


def test_tokens_are_short_random_and_url_safe() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) == TOKEN_CHARS and parse_press(f"m:{t}") for t in tokens)


@pytest.mark.parametrize(
    "press",
    [
        Press("more", "abcdefghij"),
        Press("nearest", "ABC-_12345"),
        Press("full", "abcdefghij", 999_999),
        Press("similar", "abcdefghij", 999_999, 10),
        Press("similar", "abcdefghij", 0, 1),
    ],
)
def test_presses_round_trip_within_64_bytes(press: Press) -> None:
    data = press.data()
    assert 1 <= len(data.encode()) <= CALLBACK_DATA_LIMIT
    assert parse_press(data) == press


@pytest.mark.parametrize(
    "data",
    [
        None,
        "",
        "m:",
        "m:short",
        "m:abcdefghijk",  # a token too long
        "m:abcdefghi!",
        "x:abcdefghij",
        "s:abcdefghij:0",  # no index
        "s:abcdefghij:0:0",  # indexes are 1-based
        "s:abcdefghij:0:11",
        "s:abcdefghij:01:1",  # no leading zeros
        "s:abcdefghij:-1:1",
        "s:abcdefghij:1234567:1",
        "f:abcdefghij",
        "f:abcdefghij:1:2",
        "m:abcdefghij:1",
        " m:abcdefghij",
        "m:abcdefghij\n",
        "m:abcdéfghij",
        "s:abcdefghij:٣:1",  # a non-ASCII digit
        "m:" + "a" * 100,
        b"m:abcdefghij",
        12,
    ],
)
def test_forged_or_garbled_callback_data_is_refused(data: object) -> None:
    assert parse_press(data) is None


def test_a_press_that_cannot_be_written_is_an_error() -> None:
    with pytest.raises(ValueError):
        Press("similar", "abcdefghij", 0, 11).data()
    with pytest.raises(ValueError):
        Press("more", "not a token").data()
