"""Which messages are for this bot, and what a reply to a photo means.

In a private chat every message is for the bot. In a group (Telegram's privacy mode already
keeps most chat away) only these are:
- its commands: `/cmd@ThisBot`, or a bare `/cmd` that is one of its own (`/help`); never
  another bot's (`/cmd@OtherBot`, or a bare `/weather` this bot does not have);
- messages that mention it (`@ThisBot a red bus`, or a photo with `@ThisBot` in its caption);
- questions about its photos: a reply to one of its photos that is a question (see
  `is_question`), when it answers questions.
Everything else in a group (chat, replies to the bot that are not questions, service
messages, other bots' commands) is not: the bot stays quiet.

A reply to a photo (once it is for the bot): a question is answered about that photo; other
words search for that photo changed by them (as a photo's caption does). The handlers do
this; `is_question` and `question_of` read the words.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import Message, MessageEntity
from telegram.constants import ChatType

GROUPS = frozenset({ChatType.GROUP, ChatType.SUPERGROUP})


@dataclass(frozen=True)
class Me:
    """The bot, as far as telling which group messages are for it goes."""

    username: str
    id: int
    commands: frozenset[str]
    """Its own command names ("help", "ask"): a bare command in a group is for it only then."""
    questions: bool = True
    """Whether it answers questions about photos (/ask is on): only then is a question
    replied to one of its photos for it."""


def is_for_bot(message: Message, me: Me) -> bool:
    """Whether the bot should answer `message` (see the module docstring)."""
    if message.chat.type not in GROUPS:
        return True
    command = _command(message)
    if command is not None:
        name, _, addressee = command[1:].partition("@")
        if addressee:
            return addressee.lower() == me.username.lower()
        return name.lower() in me.commands
    if _mentions(message, me.username, me.id):
        return True
    reply = message.reply_to_message
    return (
        me.questions
        and reply is not None
        and reply.from_user is not None
        and reply.from_user.id == me.id
        and has_picture(reply)
        and is_question(message.text or "")
    )


def is_in_group(message: Message) -> bool:
    """Whether `message` was sent in a group (or supergroup), not a private chat."""
    return message.chat.type in GROUPS


def has_picture(message: Message) -> bool:
    """A photo, or a file that is a picture."""
    document = message.document
    return bool(message.photo) or bool(document and (document.mime_type or "").startswith("image/"))


def unique_id(message: Message) -> str:
    """The `file_unique_id` of the message's picture (its largest size): the same for every
    copy of one file, in any chat."""
    item = message.photo[-1] if message.photo else message.document
    assert item is not None, "message has no picture"
    return item.file_unique_id


def is_question(words: str) -> bool:
    """Whether words replied to a photo ask about it: they start or end with a question mark
    ("what colour is it?", "? colour"). Anything else changes the photo's search."""
    words = words.strip()
    return words.startswith("?") or words.endswith("?")


def question_of(words: str) -> str:
    """The question in `words` (`is_question`): without a leading "?", spaces tidied; empty
    for a "?" alone, which asks for a description."""
    return " ".join(words.strip().removeprefix("?").split())


def without_mention(message: Message, bot_username: str) -> str:
    """The message's text (or caption) with every @mention of the bot taken out (in a group,
    "@bot a red circle" searches for "a red circle")."""
    text = message.text if message.text is not None else (message.caption or "")
    for entity in sorted(_mentions(message, bot_username, None), key=lambda e: -e.offset):
        text = _cut_utf16(text, entity.offset, entity.length)
    return text


def _command(message: Message) -> str | None:
    """ "/cmd" or "/cmd@Bot" when the text or caption starts with a command, else None."""
    for entity, text in _entities(message).items():
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            return text
    return None


def _mentions(message: Message, bot_username: str, bot_id: int | None) -> list[MessageEntity]:
    """The entities that mention the bot: "@username", or a text mention of its user."""
    handle = f"@{bot_username.lower()}"
    return [
        entity
        for entity, text in _entities(message).items()
        if (entity.type == MessageEntity.MENTION and text.lower() == handle)
        or (entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot_id)
    ]


def _entities(message: Message) -> dict[MessageEntity, str]:
    """The message's entities (of its text, else of its caption) with the text of each."""
    if message.text is not None:
        return message.parse_entities()
    if message.caption is not None:
        return message.parse_caption_entities()
    return {}


def _cut_utf16(text: str, offset: int, length: int) -> str:
    """`text` without the UTF-16 code units [offset, offset + length) (Telegram's units)."""
    units = text.encode("utf-16-le")
    return (units[: offset * 2] + units[(offset + length) * 2 :]).decode("utf-16-le")
