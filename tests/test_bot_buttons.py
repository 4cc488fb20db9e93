"""End to end: the buttons under albums (More, Similar, Full size) and inline mode, with
`python -m bot` as a real process, the real core (CLIP fixture + Chroma) and the fake
Telegram Bot API."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import replies
from tests.bot_harness import RunningBot, build_index, jpeg, running_bot
from tests.fake_telegram import FakeTelegram, Sent

ALLOWED = range(2000, 2100)
STRANGER = 666
STORAGE = -1001111111111
MORE, FULL = "More ▸", "Full size"
_users = itertools.count(2000)
CATS = list(range(0, 72, 3))
"""Positions (over train2014 then val2014) of the pictures whose instances hold a cat."""


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    settings, images = build_index(
        tmp_path_factory.mktemp("buttons"),
        {"train2014": 48, "val2014": 24},
        categories={"cat": CATS, "dog": [1, 2]},
        allowed_user_ids=frozenset(ALLOWED),
        rate_limit_per_minute=0,
        inline_enabled=True,
        storage_chat_id=STORAGE,
    )
    with FakeTelegram() as tg, running_bot(settings, images, tg) as running:
        yield running
        tg.assert_no_errors()
    assert running.proc.returncode == 0, running.log()[-3000:]


def search(tg: FakeTelegram, text: str, user: int) -> tuple[Sent, Sent]:
    """An album and the message with its buttons."""
    since = len(tg.sent_to(user))
    tg.inject_text(text, user_id=user)
    album, buttons = tg.wait_sent(user, 2, timeout=60, since=since)
    return album, buttons


def buttons_of(message: Sent | dict[str, Any]) -> dict[str, str]:
    msg = message.messages[0] if isinstance(message, Sent) else message
    rows = msg.get("reply_markup", {}).get("inline_keyboard", [])
    return {b["text"]: b["callback_data"] for row in rows for b in row}


def press(
    tg: FakeTelegram, message: Sent, data: str, user: int, n: int = 2, as_user: int | None = None
) -> tuple[dict[str, Any], list[Sent]]:
    """Press a button whose data is `data` under `message`: its answer, and the `n` things
    sent to `user` after it. As a user would, press again when told the previous press is
    still being finished (its page is out, the bot may still be closing it)."""
    since = len(tg.sent_to(user))
    for _ in range(600):
        query = tg.inject_callback_query(data, message.messages[0], user_id=as_user or user)
        answer = tg.callback_answer(query["id"], timeout=30).params
        if answer.get("text") != replies.BUTTON_BUSY:
            break
        time.sleep(0.05)
    return answer, (tg.wait_sent(user, n, timeout=60, since=since) if n else [])


def test_the_button_message_shows_the_reading_and_where_we_are(bot: RunningBot) -> None:
    album, buttons = search(bot.tg, "a red circle", next(_users))
    assert album.kind == "media_group" and len(album.messages) == 5
    assert buttons.text == "🔎 a red circle — 1–5"  # how many in all: not known yet
    labels = list(buttons_of(buttons))
    assert labels == ["Similar 1", "Similar 2", "Similar 3", "Similar 4", "Similar 5", FULL, MORE]
    assert all(1 <= len(data.encode()) <= 64 for data in buttons_of(buttons).values())


def test_more_until_the_end(bot: RunningBot) -> None:
    user = next(_users)
    album, buttons = search(bot.tg, "a blue square", user)
    seen = len(album.messages)
    while MORE in buttons_of(buttons):
        answer, [album, buttons] = press(bot.tg, buttons, buttons_of(buttons)[MORE], user)
        assert not answer.get("text")
        assert album.captions[0].startswith(f"#{seen + 1} · ")  # ranks continue
        assert f"— {seen + 1}–{seen + len(album.messages)}" in buttons.text
        seen += len(album.messages)
        assert seen <= 72
    assert buttons.text == "🔎 a blue square — 71–72 of 72\nThat's all I found."


def test_similar_from_result_2_finds_pictures_like_it_but_not_itself(bot: RunningBot) -> None:
    user = next(_users)
    album, buttons = search(bot.tg, "a green triangle", user)
    _, [similar, after] = press(bot.tg, buttons, buttons_of(buttons)["Similar 2"], user)
    pressed = bot.tg.file_bytes(album.photo_file_ids[1])
    assert pressed not in [bot.tg.file_bytes(fid) for fid in similar.photo_file_ids]
    assert bot.album_labels(similar) == [("green", "triangle")] * 5
    assert after.text == "🔎 like #2 of a green triangle — 1–5"


def test_full_size_sends_the_indexed_files(bot: RunningBot) -> None:
    user = next(_users)
    album, buttons = search(bot.tg, "a yellow circle", user)
    _, documents = press(bot.tg, buttons, buttons_of(buttons)[FULL], user, n=5)
    assert [d.kind for d in documents] == ["document"] * 5
    originals = {image.path.read_bytes() for image in bot.images}
    labels = bot.album_labels(album)
    for rank, (document, label) in enumerate(zip(documents, labels, strict=True), 1):
        data = bot.tg.file_bytes(document.messages[0]["document"]["file_id"])
        assert data in originals  # the original file, not a recompressed photo
        assert bot.label_of_upload(data) == label
        assert document.caption.startswith(f"#{rank}")


def test_an_expired_or_forged_token(bot: RunningBot) -> None:
    user = next(_users)
    _, buttons = search(bot.tg, "a red square", user)
    more = buttons_of(buttons)[MORE]
    token = more.split(":")[1]
    path = bot.settings.chroma_path / f"{bot.settings.collection}-telegram-searches.sqlite3"
    with sqlite3.connect(path) as db:
        assert db.execute("DELETE FROM searches WHERE token = ?", (token,)).rowcount == 1
    before = len(bot.tg.sent_to(user))
    answer, _ = press(bot.tg, buttons, more, user, n=0)
    assert answer["text"] == replies.BUTTON_EXPIRED
    answer, _ = press(bot.tg, buttons, "m:ZZZZZZZZZZ", user, n=0)
    assert answer["text"] == replies.BUTTON_EXPIRED
    answer, _ = press(bot.tg, buttons, "s:" + token + ":0:99", user, n=0)
    assert answer["text"] == replies.BUTTON_BROKEN
    bot.tg.wait_updates_consumed()
    assert len(bot.tg.sent_to(user)) == before


def test_a_stranger_pressing_a_button_is_refused(bot: RunningBot) -> None:
    user = next(_users)
    _, buttons = search(bot.tg, "a blue circle", user)
    before = len(bot.tg.sent_to(user))
    answer, _ = press(bot.tg, buttons, buttons_of(buttons)[MORE], user, n=0, as_user=STRANGER)
    assert "private" in answer["text"]
    bot.tg.wait_updates_consumed()
    assert len(bot.tg.sent_to(user)) == before and bot.tg.sent_to(STRANGER) == []


def test_inline_query_pages_and_keeps_what_it_uploaded(bot: RunningBot) -> None:
    tg, user = bot.tg, next(_users)
    forget_file_ids(bot)  # earlier tests sent these pictures: make them new to Telegram again
    query = tg.inject_inline_query("a red circle", user_id=user)
    first = tg.inline_answer(query["id"], timeout=60).params
    assert len(first["results"]) == 10 and str(first["next_offset"]) == "10"
    assert first["is_personal"] is True
    assert [r["id"] for r in first["results"]] == [str(i) for i in range(1, 11)]
    [upload] = tg.sent_to(STORAGE)  # the pictures new to Telegram went there, once
    assert sorted(upload.photo_file_ids) == sorted(r["photo_file_id"] for r in first["results"])
    query = tg.inject_inline_query("a red circle", "10", user_id=user)
    second = tg.inline_answer(query["id"], timeout=60).params
    assert [r["id"] for r in second["results"]] == [str(i) for i in range(11, 21)]
    after_two_pages = len(tg.sent_to(STORAGE))
    query = tg.inject_inline_query("a red circle", user_id=user)
    again = tg.inline_answer(query["id"], timeout=60).params
    assert [r["photo_file_id"] for r in again["results"]] == [
        r["photo_file_id"] for r in first["results"]
    ]
    assert len(tg.sent_to(STORAGE)) == after_two_pages  # nothing uploaded again
    query = tg.inject_inline_query("", user_id=user)
    assert tg.inline_answer(query["id"], timeout=30).params["results"] == []


def forget_file_ids(bot: RunningBot) -> None:
    """Empty the running bot's file_id cache (SQLite: safe to write from another process)."""
    path = bot.settings.chroma_path / f"{bot.settings.collection}-telegram-file-ids.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM file_ids")


def test_buttons_keep_working_after_a_restart(tmp_path: Path) -> None:
    settings, images = build_index(tmp_path, {"val2014": 24}, rate_limit_per_minute=0)
    user = 3000
    with FakeTelegram() as tg:
        with running_bot(settings, images, tg):
            album, buttons = search(tg, "a red circle", user)
        with running_bot(settings, images, tg) as again:
            _, [page2, after] = press(tg, buttons, buttons_of(buttons)[MORE], user)
            assert page2.captions[0].startswith("#6 · ")
            assert after.text == "🔎 a red circle — 6–10"
            assert set(page2.photo_file_ids).isdisjoint(album.photo_file_ids)
            assert again.proc.poll() is None
        tg.assert_no_errors()


# --- what a search can say: compound queries, hashtags, a photo changed by words -------------


def picture_positions(bot: RunningBot, album: Sent) -> list[int]:
    """Where each photo of the album is among the indexed pictures (by its bytes)."""
    by_bytes = {image.path.read_bytes(): n for n, image in enumerate(bot.images)}
    return [by_bytes[bot.tg.file_bytes(fid)] for fid in album.photo_file_ids]


def test_hashtags_filter_by_category(bot: RunningBot) -> None:
    user = next(_users)
    album, buttons = search(bot.tg, "#cat a red circle", user)
    assert set(picture_positions(bot, album)) <= set(CATS)
    assert "#cat" in buttons.text
    bot.tg.inject_text("#cta", user_id=user)
    [reply] = bot.tg.wait_sent(user, since=2, timeout=60)
    assert "did you mean #cat?" in reply.text


def test_a_refused_hashtag_is_not_logged_with_the_users_words(bot: RunningBot) -> None:
    """The bot logs at INFO (the default LOG_LEVEL): a refused search is logged by its ids and
    kind; the words, in a message or an inline query, only at DEBUG."""
    user = next(_users)
    bot.tg.inject_text("#quokkazebra on a beach", user_id=user)
    [reply] = bot.tg.wait_sent(user, timeout=60)
    assert "no category #quokkazebra" in reply.text.lower()
    query = bot.tg.inject_inline_query("#quokkazebra", user_id=user)
    assert bot.tg.inline_answer(query["id"], timeout=60).params["results"] == []
    log = bot.log()
    assert f"chat {user} user {user} message" in log and "failed: UnknownCategory" in log
    assert "(inline_query) user" in log
    assert "quokkazebra" not in log


def test_compound_queries(bot: RunningBot) -> None:
    album, buttons = search(bot.tg, "red + square", next(_users))
    assert bot.album_labels(album) == [("red", "square")] * 5
    assert "red" in buttons.text and "square" in buttons.text


def test_a_photo_changed_by_its_caption(bot: RunningBot) -> None:
    user = next(_users)
    bot.tg.inject_photo(
        jpeg("green", "square", (160, 120)), 'a blue square -"a green square"', user_id=user
    )
    album, buttons = bot.tg.wait_sent(user, 2, timeout=60)
    assert bot.album_labels(album)[:3] == [("blue", "square")] * 3
    assert "your photo" in buttons.text
