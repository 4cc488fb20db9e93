"""End to end, as a person meets it: paging that tells the truth (issue 23, items 1–5), with
`python -m bot` as a real process, the real core (CLIP fixture + Chroma) and the fake
Telegram Bot API.

The index folds most pictures of one colour and shape together as near-duplicates
(DUPLICATE_COSINE 0.995, where the fixture CLIP puts them at ~0.99), so a search drops most
of the neighbours it fetches: More and inline mode must go on until the results really end.
Its categories include one held by a single picture (#bird)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest

from core.search.service import Query, SearchService
from tests.bot_harness import RunningBot, build_index, running_bot
from tests.fake_telegram import FakeTelegram, Sent
from tests.test_bot_buttons import buttons_of, press, search

ALLOWED = range(4000, 4100)
STORAGE = -1002222222222
MORE = "More ▸"
TOP_K = 5
_users = itertools.count(4000)
CLUSTERED = 0.995
QUERIES = ("a red circle", "a blue square")
SCORE = re.compile(r"#\d+ · (0\.\d\d|1\.00)( · .*)?")
"""An album's or an inline result's caption: rank, a score from 0.00 to 1.00, caption."""


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The index, and what the core finds for each query when asked for everything at once:
    what paging must end up showing."""
    settings, images = build_index(
        tmp_path_factory.mktemp("paging"),
        {"train2014": 48, "val2014": 24},
        categories={"cat": list(range(0, 72, 3)), "bird": [5]},
        duplicate_cosine=CLUSTERED,
        top_k=TOP_K,
        allowed_user_ids=frozenset(ALLOWED),
        rate_limit_per_minute=0,
        inline_enabled=True,
        storage_chat_id=STORAGE,
    )
    service = SearchService.open(settings)
    found = {
        text: [hit.path for hit in service.page(service.prepare(Query(text=text)), 200).hits]
        for text in QUERIES
    }
    return {"settings": settings, "images": images, "found": found}


@pytest.fixture(scope="module")
def bot(expected: dict[str, Any]) -> Iterator[RunningBot]:
    with FakeTelegram() as tg, running_bot(expected["settings"], expected["images"], tg) as bot:
        yield bot
        tg.assert_no_errors()


def paths_of(bot: RunningBot, file_ids: list[str]) -> list[str]:
    """The indexed file behind each photo Telegram holds (by its bytes)."""
    by_bytes = {image.path.read_bytes(): str(image.path) for image in bot.images}
    return [by_bytes[bot.tg.file_bytes(file_id)] for file_id in file_ids]


def walk(bot: RunningBot, album: Sent, buttons: Sent, user: int) -> tuple[list[Sent], list[Sent]]:
    """Press More until it is gone: every album and every message under one."""
    albums, messages = [album], [buttons]
    while MORE in buttons_of(buttons):
        _, [album, buttons] = press(bot.tg, buttons, buttons_of(buttons)[MORE], user)
        albums.append(album)
        messages.append(buttons)
    return albums, messages


@pytest.mark.parametrize("text", QUERIES)
def test_more_goes_on_until_the_results_really_end(
    bot: RunningBot, expected: dict[str, Any], text: str
) -> None:
    """Item 1 (and 2): every page full until the last; the last page says how many there
    were, as many as the core finds at once; no page claims the index's size."""
    everything = expected["found"][text]
    assert len(everything) > 3 * TOP_K  # the old paging ended at the 3rd or 4th page
    user = next(_users)
    albums, messages = walk(bot, *search(bot.tg, text, user), user)
    shown = [path for album in albums for path in paths_of(bot, album.photo_file_ids)]
    assert shown == everything
    assert all(len(album.messages) == TOP_K for album in albums[:-1])
    assert messages[0].text == f"🔎 {text} — 1–5"  # how many in all is not known yet
    first = len(everything) - len(albums[-1].messages) + 1
    last = f"{first}–{len(everything)}" if first < len(everything) else str(first)
    assert messages[-1].text == f"🔎 {text} — {last} of {len(everything)}\nThat's all I found."
    assert not any("of 72" in message.text for message in messages)


def inline_walk(bot: RunningBot, text: str, user: int) -> list[list[dict[str, Any]]]:
    """Every page of an inline query, following next_offset."""
    pages, offset = [], ""
    while True:
        query = bot.tg.inject_inline_query(text, offset, user_id=user)
        answer = bot.tg.inline_answer(query["id"], timeout=60).params
        pages.append(answer["results"])
        offset = str(answer.get("next_offset") or "")
        if not offset:
            return pages


def test_inline_pages_agree_with_the_buttons(bot: RunningBot, expected: dict[str, Any]) -> None:
    """Item 1: inline mode pages through the same results, in the same order, to the end;
    its captions read as the albums'."""
    pages = inline_walk(bot, "a red circle", next(_users))
    results = [result for page in pages for result in page]
    assert paths_of(bot, [r["photo_file_id"] for r in results]) == expected["found"]["a red circle"]
    assert all(len(page) == 10 for page in pages[:-1])
    assert [r["id"] for r in results] == [str(i) for i in range(1, len(results) + 1)]
    assert all(SCORE.fullmatch(r["caption"]) for r in results)


def test_a_category_of_one_picture(bot: RunningBot) -> None:
    """Item 2: one result is "1 picture", not "1–1 of 72"; and its score, a negative cosine,
    reads 0.00."""
    album, buttons = search(bot.tg, "#bird", next(_users))
    assert len(album.messages) == 1
    assert buttons.text == "🔎 #bird — 1 picture\nThat's all I found."
    assert SCORE.fullmatch(album.captions[0]) and "-" not in album.captions[0]


def reply_to(bot: RunningBot, text: str, user: int) -> Sent:
    """The one thing the bot sends back to `text` (nothing else follows it)."""
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text(text, user_id=user)
    [reply] = bot.tg.wait_sent(user, 1, timeout=60, since=since)
    bot.tg.wait_updates_consumed()
    assert len(bot.tg.sent_to(user)) == since + 1
    return reply


@pytest.mark.parametrize(
    "text",
    ["...", "\N{ZERO WIDTH SPACE}", "\N{INVISIBLE SEPARATOR}\N{SOFT HYPHEN}", "?! …", "🙂"],
)
def test_nothing_to_search_is_answered_as_a_lone_plus(bot: RunningBot, text: str) -> None:
    """Item 3: invisible, punctuation-only and emoji-only texts (the fixture CLIP has no token
    for 🙂: it spells it byte by byte) get the answer `+` alone gets, not an album; inline
    mode lists nothing for them."""
    user = next(_users)
    plus = reply_to(bot, "+", user)
    assert plus.kind == "message" and "few words" in plus.text
    reply = reply_to(bot, text, user)
    assert reply.kind == "message" and reply.text == plus.text
    query = bot.tg.inject_inline_query(text, user_id=user)
    assert bot.tg.inline_answer(query["id"], timeout=60).params["results"] == []


def bold(message: Sent) -> list[str]:
    """The bold parts of a message's text, as Telegram shows them."""
    msg, text = message.messages[0], message.text or ""
    encoded = text.encode("utf-16-le")
    return [
        encoded[2 * e["offset"] : 2 * (e["offset"] + e["length"])].decode("utf-16-le")
        for e in msg.get("entities", [])
        if e["type"] == "bold"
    ]


def test_similar_says_where_it_came_from_and_leaves_its_picture_out(bot: RunningBot) -> None:
    """Item 4: "like #2 of a red circle" (the search in bold), never an internal id; the
    pressed picture is in none of the Similar search's pages; a Similar of a Similar names
    both presses."""
    user = next(_users)
    album, buttons = search(bot.tg, "a red circle", user)
    [pressed] = paths_of(bot, album.photo_file_ids[1:2])
    _, [similar, under] = press(bot.tg, buttons, buttons_of(buttons)["Similar 2"], user)
    assert under.text == "🔎 like #2 of a red circle — 1–5"
    assert bold(under) == ["a red circle"]
    albums, messages = walk(bot, similar, under, user)
    shown = [path for a in albums for path in paths_of(bot, a.photo_file_ids)]
    assert pressed not in shown and len(shown) == len(set(shown)) > TOP_K
    assert all(m.text.startswith("🔎 like #2 of a red circle — ") for m in messages)
    assert messages[-1].text.endswith(f"of {len(shown)}\nThat's all I found.")
    _, [again, under_again] = press(bot.tg, under, buttons_of(under)["Similar 1"], user)
    assert under_again.text == "🔎 like #1 of like #2 of a red circle — 1–5"
    [pressed_again] = paths_of(bot, similar.photo_file_ids[:1])
    assert pressed_again not in paths_of(bot, again.photo_file_ids)


def test_scores_people_can_read(bot: RunningBot) -> None:
    """Item 5: the far end of a search has negative cosines; every caption shows 0.00 to
    1.00, never "-0.00"; /help says what the number means for this model."""
    user = next(_users)
    bird, _ = search(bot.tg, "#bird", user)  # its one picture's cosine is -0.01
    assert SCORE.fullmatch(bird.captions[0]) and bird.captions[0].startswith("#1 · 0.00 · ")
    albums, _ = walk(bot, *search(bot.tg, "a blue square", user), user)
    captions = [caption for album in albums for caption in album.captions]
    assert all(SCORE.fullmatch(caption) for caption in captions), captions
    assert captions[-1].startswith(f"#{len(captions)} · 0.00")  # a negative cosine, as 0.00
    help_text = reply_to(bot, "/help", user).text
    assert "higher is closer" in help_text and "about 0.3" in help_text
