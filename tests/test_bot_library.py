"""End to end: each chat's own library (issue 25), with `python -m bot` as a real process and
the fake Telegram Bot API: two groups and private chats; photos posted with the library on
and off; who may switch it; searches that find a chat's pictures only in that chat (the other
chat's pictures match the query better); /save, /forget, /library clear, the limits, a file
Telegram no longer honours; and (in its own test) a burst of 100 photos while someone
searches, and a restart that keeps the libraries."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot import library_texts as texts
from tests.bot_harness import RunningBot, build_index, jpeg, running_bot
from tests.fake_telegram import FakeTelegram, Sent
from tests.test_bot_buttons import buttons_of
from tests.test_bot_texts import assert_texts_read_well

BOT = "test_image_bot"
G1, G2, G3 = -1005555555501, -1005555555502, -5555503
ADMIN1, ADMIN2, MEMBER, OTHER = 5001, 5002, 5003, 5004
_users = itertools.count(5100)
MAX_PER_CHAT = 6
RETENTION_DAYS = 30


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    settings, images = build_index(
        tmp_path_factory.mktemp("library"),
        {"train2014": 16, "val2014": 8},
        rate_limit_per_minute=0,
        library_enabled=True,
        library_max_per_chat=MAX_PER_CHAT,
        library_retention_days=RETENTION_DAYS,
        inline_enabled=True,
    )
    with FakeTelegram() as tg, running_bot(settings, images, tg) as running:
        tg.set_admins(G1, ADMIN1)
        tg.set_admins(G2, ADMIN2, tg.bot_user["id"])
        tg.set_admins(G3, ADMIN1, tg.bot_user["id"])
        yield running
        tg.assert_no_errors(allow_unknown=True)
    assert running.proc.returncode == 0, running.log()[-3000:]


def say(bot: RunningBot, chat: int, text: str, user: int, **kwargs: Any) -> dict[str, Any]:
    """`user` writes `text` in `chat`; in a group, a search mentions the bot."""
    if chat < 0 and not text.startswith("/"):
        text = f"@{BOT} {text}"
        kwargs["entities"] = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    return bot.tg.inject_text(text, user_id=user, chat_id=chat, **kwargs)


def answer(bot: RunningBot, chat: int, text: str, user: int, **kwargs: Any) -> Sent:
    since = len(bot.tg.sent_to(chat))
    say(bot, chat, text, user, **kwargs)
    return bot.tg.wait_sent(chat, 1, timeout=60, since=since)[0]


def search(bot: RunningBot, chat: int, text: str, user: int) -> tuple[Sent, Sent]:
    """The album and the message with its buttons."""
    since = len(bot.tg.sent_to(chat))
    say(bot, chat, text, user)
    album, buttons = bot.tg.wait_sent(chat, 2, timeout=60, since=since)
    return album, buttons


def added(bot: RunningBot, chat: int) -> int:
    return len(re.findall(rf"library of chat {chat}: added message", bot.log()))


def post(
    bot: RunningBot, chat: int, user: int, picture: tuple[str, str], seed: int, **fields: Any
) -> str:
    """`user` posts a photo in `chat`; its (largest size's) file_id."""
    message = bot.tg.inject_photo(
        jpeg(*picture, size=(160, 120), seed=seed), user_id=user, chat_id=chat, **fields
    )
    return message["photo"][-1]["file_id"]


def post_and_wait(
    bot: RunningBot, chat: int, user: int, pictures: list[tuple[str, str]], seed: int = 0
) -> list[str]:
    before = added(bot, chat)
    ids = [post(bot, chat, user, picture, seed + n) for n, picture in enumerate(pictures)]
    deadline = time.monotonic() + 60
    while added(bot, chat) < before + len(pictures):
        assert time.monotonic() < deadline, bot.log()[-3000:]
        time.sleep(0.1)
    return ids


def library_ids(album: Sent) -> list[str]:
    """The photos of `album` that are library pictures (sent by a posted photo's file_id)."""
    return [
        fid
        for fid, caption in zip(album.photo_file_ids, album.captions, strict=True)
        if (caption or "").startswith(texts.MARK)
    ]


@pytest.fixture(scope="module")
def posted(bot: RunningBot) -> dict[int, list[str]]:
    """Libraries on in G1 and G2; G1 gets blue squares, G2 red circles (what the searches
    below ask for in G1: G2's match them better than anything of G1's)."""
    assert "Library on" in answer(bot, G1, "/library on", ADMIN1).text
    assert "Library on" in answer(bot, G2, "/library on", ADMIN2).text
    return {
        G1: post_and_wait(bot, G1, MEMBER, [("blue", "square")] * 2, seed=10),
        G2: post_and_wait(bot, G2, OTHER, [("red", "circle")] * 3, seed=20),
    }


def test_only_administrators_switch_it_and_the_bot_says_when_it_cannot_see(
    bot: RunningBot,
) -> None:
    refused = answer(bot, G3, "/library on", MEMBER)
    assert refused.text == texts.ADMINS_ONLY
    on = answer(bot, G1, "/library on", ADMIN1).text
    assert "Library on" in on and "privacy mode" in on  # the bot is no admin in G1
    assert "privacy mode" not in answer(bot, G2, "/library on", ADMIN2).text
    private = next(_users)
    assert "Library on" in answer(bot, private, "/library on", private).text
    assert "Library off" in answer(bot, private, "/library off", private).text


def test_posts_are_kept_silently(bot: RunningBot, posted: dict[int, list[str]]) -> None:
    for chat in (G1, G2):
        texts_sent = [s.text or "" for s in bot.tg.sent_to(chat)]
        assert all("Library on" in t for t in texts_sent), texts_sent  # nothing else said
    state = answer(bot, G2, "/library", MEMBER).text
    assert "is on" in state and "3 pictures" in state


def test_a_chats_pictures_are_found_only_in_that_chat(
    bot: RunningBot, posted: dict[int, list[str]]
) -> None:
    album, _ = search(bot, G2, "a red circle", MEMBER)
    mine = library_ids(album)
    assert mine and set(mine) <= set(posted[G2])
    caption = album.captions[album.photo_file_ids.index(mine[0])]
    assert re.fullmatch(r"📚 #\d · \d\.\d\d · \d+ \w{3} 20\d\d, User5004", caption), caption
    for chat, user in ((G1, MEMBER), (next(_users), None)):
        for text in ("a red circle", "a blue square", "a circle"):
            album, _ = search(bot, chat, text, user or chat)
            found = set(album.photo_file_ids)
            others = {fid for c, ids in posted.items() if c != chat for fid in ids}
            assert not found & others, (chat, text)
    album, _ = search(bot, G1, "a blue square", MEMBER)
    assert set(library_ids(album)) <= set(posted[G1]) and library_ids(album)
    inline = bot.tg.inject_inline_query("a red circle", user_id=MEMBER)
    results = bot.tg.inline_answer(inline["id"], timeout=60).params.get("results", [])
    assert not set(map(str, results)) & {str(fid) for ids in posted.values() for fid in ids}
    assert "This chat's library: 3 pictures (on)" in answer(bot, G2, "/stats", MEMBER).text
    assert "This chat's library: 2 pictures (on)" in answer(bot, G1, "/stats", MEMBER).text


def test_a_button_pressed_in_another_chat_finds_nothing(
    bot: RunningBot, posted: dict[int, list[str]]
) -> None:
    _, buttons = search(bot, G2, "a red circle", MEMBER)
    in_g1 = bot.tg.sent_to(G1)[-1].messages[0]
    for data in buttons_of(buttons).values():
        query = bot.tg.inject_callback_query(data, in_g1, user_id=MEMBER)
        assert bot.tg.callback_answer(query["id"], timeout=30).params.get("text")
    time.sleep(0.5)
    sent = {fid for s in bot.tg.sent_to(G1) for fid in s.photo_file_ids}
    assert not sent & set(posted[G2])


def test_similar_and_the_way_back_to_the_message(
    bot: RunningBot, posted: dict[int, list[str]]
) -> None:
    album, buttons = search(bot, G2, "a red circle", MEMBER)
    rank = album.photo_file_ids.index(library_ids(album)[0]) + 1
    keys = buttons_of(buttons)
    since = len(bot.tg.sent_to(G2))
    query = bot.tg.inject_callback_query(
        keys[texts.jump_label(rank)], buttons.messages[0], user_id=MEMBER
    )
    bot.tg.callback_answer(query["id"], timeout=30)
    [jump] = bot.tg.wait_sent(G2, 1, timeout=60, since=since)
    assert jump.text.startswith(f"{texts.MARK} #{rank} was posted here on")
    assert "by User5004" in jump.text
    replied = jump.messages[0]["reply_to_message"]
    assert replied["photo"][-1]["file_id"] == album.photo_file_ids[rank - 1]
    since = len(bot.tg.sent_to(G2))
    query = bot.tg.inject_callback_query(
        keys[f"Similar {rank}"], buttons.messages[0], user_id=MEMBER
    )
    bot.tg.callback_answer(query["id"], timeout=30)
    similar, after = bot.tg.wait_sent(G2, 2, timeout=60, since=since)
    assert album.photo_file_ids[rank - 1] not in similar.photo_file_ids
    assert set(library_ids(similar)) <= set(posted[G2]) - {album.photo_file_ids[rank - 1]}
    assert after.text.startswith(f"🔎 like #{rank} of a red circle")


def test_save_forget_and_clear(bot: RunningBot, posted: dict[int, list[str]]) -> None:
    user = next(_users)
    photo = bot.tg.inject_photo(jpeg("green", "triangle", seed=5), user_id=user)
    bot.tg.wait_sent(user, 2, timeout=60)  # library off: a search, as always
    assert answer(bot, user, "/save", user, reply_to=photo).text == texts.SAVED.format(
        count="1 picture"
    )
    assert answer(bot, user, "/save", user, reply_to=photo).text == texts.ALREADY
    album, _ = search(bot, user, "a green triangle", user)
    assert photo["photo"][-1]["file_id"] in album.photo_file_ids
    assert "0 pictures left" in answer(bot, user, "/forget", user, reply_to=photo).text
    assert answer(bot, user, "/forget", user, reply_to=photo).text == texts.NOT_THERE

    mine = bot.tg.inject_photo(jpeg("blue", "square", seed=77), user_id=MEMBER, chat_id=G1)
    post_deadline = time.monotonic() + 60
    while added(bot, G1) < 3 and time.monotonic() < post_deadline:
        time.sleep(0.1)
    assert answer(bot, G1, "/forget", OTHER, reply_to=mine).text == texts.FORGET_NOT_YOURS
    assert "2 pictures left" in answer(bot, G1, "/forget", MEMBER, reply_to=mine).text

    assert answer(bot, G1, "/library clear", MEMBER).text == texts.ADMINS_ONLY
    ask = answer(bot, G1, "/library clear", ADMIN1)
    assert ask.text == texts.CLEAR_ASK.format(count="2 pictures")
    yes = buttons_of(ask)["Remove all 2"]
    refused = bot.tg.inject_callback_query(yes, ask.messages[0], user_id=MEMBER)
    assert bot.tg.callback_answer(refused["id"]).params["text"] == texts.ADMINS_ONLY
    query = bot.tg.inject_callback_query(yes, ask.messages[0], user_id=ADMIN1)
    bot.tg.callback_answer(query["id"])
    deadline = time.monotonic() + 30
    while bot.tg.message(G1, ask.messages[0]["message_id"])["text"] == ask.text:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    edited = bot.tg.message(G1, ask.messages[0]["message_id"])["text"]
    assert edited == texts.CLEAR_DONE.format(count="2 pictures")
    album, _ = search(bot, G1, "a blue square", MEMBER)
    assert not library_ids(album)


def test_the_limits_hold(bot: RunningBot) -> None:
    post(bot, G3, MEMBER, ("red", "square"), seed=299)  # the library is still off: not kept
    assert "(it holds 0 pictures)" in answer(bot, G3, "/library on", ADMIN1).text
    old = int(time.time()) - (RETENTION_DAYS + 5) * 86_400
    before = added(bot, G3)
    post(bot, G3, MEMBER, ("red", "square"), seed=300, date=old)
    while added(bot, G3) == before:
        time.sleep(0.1)
    ids = post_and_wait(bot, G3, MEMBER, [("green", "circle")] * (MAX_PER_CHAT + 2), seed=400)
    assert f"It holds {MAX_PER_CHAT} pictures" in answer(bot, G3, "/library", MEMBER).text
    album, _ = search(bot, G3, "a green circle", MEMBER)
    kept = set(library_ids(album))
    assert kept and kept <= set(ids[2:])  # the two oldest went first
    bot.tg.revoke_file(sorted(kept)[0])
    album, _ = search(bot, G3, "a green circle", MEMBER)
    assert sorted(kept)[0] not in album.photo_file_ids
    assert f"It holds {MAX_PER_CHAT - 1} pictures" in answer(bot, G3, "/library", MEMBER).text


def test_help_says_what_is_kept_and_how_to_delete_it(bot: RunningBot) -> None:
    text = answer(bot, G1, f"/help@{BOT}", MEMBER).text
    assert "This chat's own library" in text and "never the picture itself" in text
    assert f"/library@{BOT} clear" in text and "administrators" in text
    private = next(_users)
    assert "/library on" in answer(bot, private, "/help", private).text


def test_every_text_reads_well(bot: RunningBot) -> None:
    assert_texts_read_well(bot.tg)


def test_a_burst_of_photos_while_someone_searches_and_a_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings, images = build_index(
        tmp_path_factory.mktemp("burst"),
        {"train2014": 8},
        rate_limit_per_minute=0,
        library_enabled=True,
    )
    group, poster, searcher = -1005555555599, 5901, 5902
    with FakeTelegram() as tg:
        with running_bot(settings, images, tg) as bot:
            tg.set_admins(group, ADMIN1)
            answer(bot, group, "/library on", ADMIN1)
            for n in range(100):
                post(bot, group, poster, ("red", "triangle"), seed=1000 + n)
            album, _ = search(bot, searcher, "a blue circle", searcher)
            assert album.kind == "media_group"
            deadline = time.monotonic() + 300
            while added(bot, group) < 100:
                assert time.monotonic() < deadline, bot.log()[-3000:]
                time.sleep(0.2)
        with running_bot(settings, images, tg) as again:
            assert "It holds 100 pictures" in answer(again, group, "/library", poster).text
            album, _ = search(again, group, "a red triangle", poster)
            assert library_ids(album)
        tg.assert_no_errors(allow_unknown=True)
