"""End to end: the bot in a group and what a reply means (issue 23, items 6-8), with
`python -m bot` as a real process and the fake Telegram Bot API. In a group the bot answers
only what is addressed to it, briefly; /start and /help say how to use it there; a reply to
one of its photos is a question or nothing, never an album for chatter. The last test reads
every text sent in these scenarios."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bot_harness import RunningBot, build_index, jpeg, running_bot
from tests.fake_telegram import FakeTelegram, Sent
from tests.test_bot_texts import assert_texts_read_well

BOT = "test_image_bot"
GROUPS = itertools.count(-1004444444401, -1)
_users = itertools.count(4000)
LOADING = "first answer takes a little longer"


def new_user() -> int:
    """A fresh user (and private chat) per scenario."""
    return next(_users)


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    settings, images = build_index(
        tmp_path_factory.mktemp("groups"),
        {"train2014": 24, "val2014": 12},
        categories={"cat": [0, 3, 6], "dog": [1, 4]},
        rate_limit_per_minute=0,
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, images, tg) as bot:
        yield bot
        tg.assert_no_errors()
    assert bot.proc.returncode == 0, bot.log()[-3000:]


def mention(text: str) -> dict[str, Any]:
    """The mention entity of "@test_image_bot" in `text`."""
    return {"type": "mention", "offset": text.index(f"@{BOT}"), "length": len(BOT) + 1}


def say(bot: RunningBot, chat: int, text: str, user: int, **kwargs: Any) -> dict[str, Any]:
    """`user` writes `text` in `chat` (a mention of the bot gets its entity)."""
    if f"@{BOT}" in text and not text.startswith("/"):
        kwargs["entities"] = [mention(text)]
    return bot.tg.inject_text(text, user_id=user, chat_id=chat, **kwargs)


def then_nothing_more(bot: RunningBot, chat: int, user: int, count: int) -> None:
    """After what was sent, the bot answers a sentinel command next and nothing else: the
    messages before it got no answer (they were handled before the sentinel arrived)."""
    say(bot, chat, f"/stats@{BOT}", user)
    sent = bot.tg.wait_sent(chat, count + 1, timeout=60)
    assert sent[-1].text.startswith("Pictures indexed"), [s.text for s in sent]
    time.sleep(0.3)
    assert len(bot.tg.sent_to(chat)) == count + 1, [s.text for s in bot.tg.sent_to(chat)]


def answer_after_notice(bot: RunningBot, chat: int, since: int, timeout: float = 120) -> Sent:
    """The first message to `chat` from the `since`-th on that is not the loading notice."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in bot.tg.sent_to(chat)[since:]:
            if sent.text and LOADING not in sent.text:
                return sent
        time.sleep(0.05)
    raise AssertionError(f"no answer in {chat}: {[s.text for s in bot.tg.sent_to(chat)]}")


# --- commands (item 6) ---------------------------------------------------------------------------


def test_in_a_group_only_commands_for_this_bot_are_answered_in_one_line(bot: RunningBot) -> None:
    group, user = next(GROUPS), new_user()
    say(bot, group, "/foo", user)  # bare: maybe another bot's
    say(bot, group, "/weather London", user)  # another bot's bare command
    say(bot, group, "/start@OtherBot", user)
    say(bot, group, f"/foo@{BOT}", user)
    [reply] = bot.tg.wait_sent(group, timeout=60)
    assert reply.text == f"I don't know /foo: /help@{BOT} shows what I can do."
    assert reply.messages[0]["reply_to_message"]["text"] == f"/foo@{BOT}"
    then_nothing_more(bot, group, user, 1)


def test_in_a_private_chat_an_unknown_command_gets_one_line(bot: RunningBot) -> None:
    user = new_user()
    bot.tg.inject_text("/frobnicate now", user_id=user)
    [reply] = bot.tg.wait_sent(user, timeout=60)
    assert reply.text == "I don't know /frobnicate: /help shows what I can do."


# --- /start and /help in a group (item 7) --------------------------------------------------------


@pytest.mark.parametrize("command", ["/start", f"/start@{BOT}", "/help", f"/help@{BOT}"])
def test_start_and_help_in_a_group_say_how_to_use_the_bot_there(
    bot: RunningBot, command: str
) -> None:
    group = next(GROUPS)
    say(bot, group, command, new_user())
    [reply] = bot.tg.wait_sent(group, timeout=60)
    text = reply.text
    assert "In this group" in text
    assert f"@{BOT} a red bus — the best matching photos" in text
    assert f"/ask@{BOT} what is the man holding?" in text
    assert "a reply to one of my photos with a question" in text
    assert f"a reply to a photo with @{BOT} at night" in text
    assert f"/help@{BOT} — this message" in text
    assert "send a few words" not in text.lower() and "Send me" not in text
    assert "This index knows 2 kinds of objects: #cat, #dog" in text


# --- what a reply means (item 8) ------------------------------------------------------------------


def test_in_a_group_a_reply_to_the_bots_photo_is_a_question_or_nothing(bot: RunningBot) -> None:
    group, user, other = next(GROUPS), new_user(), new_user()
    say(bot, group, f"@{BOT} a red circle", user)
    [album] = bot.tg.wait_sent(group, timeout=60)
    assert album.kind == "media_group"
    photo = album.messages[0]
    say(bot, group, "nice one!", other, reply_to=photo)  # chatter
    say(bot, group, "haha", user, reply_to=photo)
    people = bot.tg.inject_photo(jpeg("blue", "square"), user_id=other, chat_id=group)
    say(bot, group, "what color is it?", user, reply_to=people)  # asked of a person
    say(bot, group, "what color is the shape?", other, reply_to=photo)
    answer = answer_after_notice(bot, group, 1)
    colour, _ = bot.album_labels(album)[0]
    assert answer.kind == "message" and answer.text == colour.capitalize()
    assert answer.messages[0]["reply_to_message"]["text"] == "what color is the shape?"
    shown = [s for s in bot.tg.sent_to(group) if LOADING not in (s.text or "")]
    assert [s.kind for s in shown] == ["media_group", "message"]  # no album for chatter
    then_nothing_more(bot, group, user, len(bot.tg.sent_to(group)))


def test_in_a_group_a_reply_that_mentions_the_bot_changes_the_photos_search(
    bot: RunningBot,
) -> None:
    group, user = next(GROUPS), new_user()
    say(bot, group, f"@{BOT} a green triangle", user)
    [album] = bot.tg.wait_sent(group, timeout=60)
    photo = album.messages[1]
    say(bot, group, f"@{BOT}", user, reply_to=photo)
    [like] = bot.tg.wait_sent(group, timeout=60, since=1)
    assert like.kind == "media_group"
    assert bot.album_labels(like)[0] == bot.album_labels(album)[1]  # the photo itself first
    file_id = photo["photo"][-1]["file_id"]
    assert [c for c in bot.tg.calls("getFile") if c.params.get("file_id") == file_id]


def test_in_a_private_chat_a_reply_to_a_photo_is_a_question_or_changes_its_search(
    bot: RunningBot,
) -> None:
    user = new_user()
    bot.tg.inject_text("a yellow square", user_id=user)
    [album] = bot.tg.wait_sent(user, timeout=60)
    photo = album.messages[2]
    colour, shape = bot.album_labels(album)[2]
    bot.tg.inject_text("what shape is it?", user_id=user, reply_to=photo)
    assert answer_after_notice(bot, user, 1).text == shape.capitalize()
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text("?", user_id=user, reply_to=photo)  # a question mark alone: describe it
    [description] = bot.tg.wait_sent(user, timeout=60, since=since)
    assert description.text == f"📷 A {colour} {shape}"
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text("blue", user_id=user, reply_to=photo)  # the photo, changed by a word
    [changed] = bot.tg.wait_sent(user, timeout=60, since=since)
    assert changed.kind == "media_group"
    labels = bot.album_labels(changed)
    assert (colour, shape) in labels, labels  # still like the photo
    assert any(c == "blue" for c, _ in labels), labels  # and changed by the word
    file_id = photo["photo"][-1]["file_id"]
    assert [c for c in bot.tg.calls("getFile") if c.params.get("file_id") == file_id]


def test_every_text_reads_well(bot: RunningBot) -> None:
    assert_texts_read_well(bot.tg)
