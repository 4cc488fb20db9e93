"""Which group messages are for this bot, as Telegram's privacy mode means it: commands
addressed to it (/cmd or /cmd@ThisBot), messages that mention it (@ThisBot), and replies to
its own messages. Everything else in a group (chat, service messages, other bots' commands)
is not. Private chats are always for the bot."""

from __future__ import annotations

from telegram import Message, MessageEntity
from telegram.constants import ChatType

GROUPS = frozenset({ChatType.GROUP, ChatType.SUPERGROUP})


def is_for_bot(message: Message, bot_username: str, bot_id: int) -> bool:
    """Whether the bot should answer `message` (see the module docstring)."""
    if message.chat.type not in GROUPS:
        return True
    command = _command(message)
    if command is not None:
        _, _, addressee = command.partition("@")
        return not addressee or addressee.lower() == bot_username.lower()
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == bot_id:
        return True
    return bool(_mentions(message, bot_username, bot_id))


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
    if message.text is not None:
        return message.parse_entities()
    if message.caption is not None:
        return message.parse_caption_entities()
    return {}


def _cut_utf16(text: str, offset: int, length: int) -> str:
    """`text` without the UTF-16 code units [offset, offset + length) (Telegram's units)."""
    units = text.encode("utf-16-le")
    return (units[: offset * 2] + units[(offset + length) * 2 :]).decode("utf-16-le")
