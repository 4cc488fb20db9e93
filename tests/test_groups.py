"""Which group messages are for the bot and what a reply to a photo means (bot/groups.py), on
Message objects as PTB parses them."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Message

from bot.groups import Me, is_for_bot, is_question, question_of, without_mention

BOT, BOT_ID = "test_image_bot", 42
ME = Me(BOT, BOT_ID, frozenset({"start", "help", "stats", "ask"}))
GROUP = {"id": -100, "type": "group", "title": "g"}
PRIVATE = {"id": 7, "type": "private", "first_name": "A"}
USER = {"id": 7, "is_bot": False, "first_name": "A"}


def message(text: str | None = None, chat: dict = GROUP, **fields: Any) -> Message:
    data: dict[str, Any] = {"message_id": 1, "date": 0, "chat": chat, "from": USER, **fields}
    if text is not None:
        data["text"] = text
        entities = list(fields.get("entities", []))
        if text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
        data["entities"] = entities
    return Message.de_json(data, None)


def mention(offset: int, length: int = len(BOT) + 1) -> dict:
    return {"type": "mention", "offset": offset, "length": length}


BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "B"}
PHOTO = [{"file_id": "p", "file_unique_id": "u", "width": 9, "height": 9}]
BOT_PHOTO = {"message_id": 2, "date": 0, "chat": GROUP, "from": BOT_USER, "photo": PHOTO}
BOT_TEXT = {"message_id": 3, "date": 0, "chat": GROUP, "from": BOT_USER, "text": "🔎 a"}
USER_PHOTO = {"message_id": 4, "date": 0, "chat": GROUP, "from": USER, "photo": PHOTO}


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (message("a red circle", chat=PRIVATE), True),
        (message("a red circle"), False),
        (message("/help"), True),
        (message("/help@test_image_bot"), True),
        (message("/help@Test_Image_Bot"), True),
        (message("/start@OtherBot"), False),
        (message("/foo"), False),  # bare and not ours: maybe another bot's
        (message("/weather London"), False),
        (message("/foo@test_image_bot"), True),  # addressed to us: answered, briefly
        (message("/foo", chat=PRIVATE), True),
        (message("@test_image_bot a red circle", entities=[mention(0)]), True),
        (message("look @test_image_bot", entities=[mention(5)]), True),
        (message("@other_bot a red circle", entities=[mention(0, 10)]), False),
        (message(None, new_chat_members=[USER]), False),
        (message(None, left_chat_member=USER), False),
        (
            message(
                None,
                photo=[],
                caption="/ask@OtherBot what?",
                caption_entities=[{"type": "bot_command", "offset": 0, "length": 13}],
            ),
            False,
        ),
        (
            message(
                None,
                photo=[],
                caption="/ask what?",
                caption_entities=[{"type": "bot_command", "offset": 0, "length": 4}],
            ),
            True,
        ),
        (message("nice one!", reply_to_message=BOT_PHOTO), False),  # chatter
        (message("a blue square", reply_to_message=BOT_TEXT), False),
        (message("what colour is it?", reply_to_message=BOT_PHOTO), True),  # a question
        (message("? colour", reply_to_message=BOT_PHOTO), True),
        (message("what colour is it?", reply_to_message=BOT_TEXT), False),  # no photo
        (message("what colour is it?", reply_to_message=USER_PHOTO), False),  # a person's
        (
            message("@test_image_bot at night", entities=[mention(0)], reply_to_message=USER_PHOTO),
            True,
        ),
        (message("nice one!", chat=PRIVATE, reply_to_message=BOT_PHOTO), True),
    ],
)
def test_is_for_bot(msg: Message, expected: bool) -> None:
    assert is_for_bot(msg, ME) is expected


def test_questions_are_for_the_bot_only_when_it_answers_them() -> None:
    msg = message("what colour is it?", reply_to_message=BOT_PHOTO)
    assert not is_for_bot(msg, Me(BOT, BOT_ID, ME.commands, questions=False))


@pytest.mark.parametrize(
    ("words", "question", "asked"),
    [
        ("what colour is it?", True, "what colour is it?"),
        ("  ? what   colour ", True, "what colour"),
        ("?", True, ""),
        ("nice one!", False, "nice one!"),
        ("at night", False, "at night"),
        ("", False, ""),
    ],
)
def test_what_a_reply_to_a_photo_asks(words: str, question: bool, asked: str) -> None:
    assert is_question(words) is question
    if question:
        assert question_of(words) == asked


def test_without_mention_counts_utf16() -> None:
    msg = message("🟥 @test_image_bot a red circle", entities=[mention(3)])
    assert without_mention(msg, BOT) == "🟥  a red circle"
    assert without_mention(message("a red circle"), BOT) == "a red circle"
