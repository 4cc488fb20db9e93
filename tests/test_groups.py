"""Which group messages are for the bot (bot/groups.py), on Message objects as PTB parses them."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Message

from bot.groups import is_for_bot, without_mention

BOT, BOT_ID = "test_image_bot", 42
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


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (message("a red circle", chat=PRIVATE), True),
        (message("a red circle"), False),
        (message("/help"), True),
        (message("/help@test_image_bot"), True),
        (message("/help@Test_Image_Bot"), True),
        (message("/start@OtherBot"), False),
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
        (
            message(
                "a blue square",
                reply_to_message={
                    "message_id": 2,
                    "date": 0,
                    "chat": GROUP,
                    "from": {"id": BOT_ID, "is_bot": True, "first_name": "B"},
                },
            ),
            True,
        ),
        (
            message(
                "a blue square",
                reply_to_message={"message_id": 2, "date": 0, "chat": GROUP, "from": USER},
            ),
            False,
        ),
    ],
)
def test_is_for_bot(msg: Message, expected: bool) -> None:
    assert is_for_bot(msg, BOT, BOT_ID) is expected


def test_without_mention_counts_utf16() -> None:
    msg = message("🟥 @test_image_bot a red circle", entities=[mention(3)])
    assert without_mention(msg, BOT) == "🟥  a red circle"
    assert without_mention(message("a red circle"), BOT) == "a red circle"
