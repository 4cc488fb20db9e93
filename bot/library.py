"""A chat's own library, as the chat meets it: `/library [on|off|clear]`, `/save` and
`/forget` as replies to a picture, the confirmation button of a clear, and `capture`, which
the gatekeeper calls for every message so that a picture posted in a chat whose library is
on is queued to be added (silently: in a group the bot answers nothing to those posts).

Who may: in a private chat, its user; in a group, `/library on|off|clear` only its
administrators (asked of Telegram with getChatMember, or the group itself for an anonymous
administrator); `/forget` whoever posted the picture, or an administrator; `/save` anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatMemberStatus
from telegram.error import TelegramError

from bot import groups
from bot import library_texts as texts
from bot.library_ingest import Posted
from bot.limits import DOWNLOAD_LIMIT
from bot.state import Context
from core.library.records import LibraryRecord, library_id

log = logging.getLogger(__name__)

COMMANDS = ("library", "save", "forget")
MANAGERS = frozenset({ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR})
CLEAR_PATTERN = r"^lc:([A-Za-z0-9_-]{12}):([yn])$"
_CLEAR = re.compile(CLEAR_PATTERN)


def posted(message: Message, min_side: int) -> Posted | None:
    """The picture of `message` as a library record to add, or None (no picture, too big, a
    bot's post, ids Telegram would not give)."""
    sender = message.from_user
    if not groups.has_picture(message) or sender is None or sender.is_bot:
        return None
    if message.photo:
        largest = message.photo[-1]
        fitting = [p for p in message.photo if min(p.width, p.height) >= min_side]
        download = fitting[0] if fitting else largest
        file_id, unique, size = largest.file_id, largest.file_unique_id, download.file_size
    else:
        document = message.document
        assert document is not None
        download = document
        file_id, unique, size = document.file_id, document.file_unique_id, document.file_size
    if size and size > DOWNLOAD_LIMIT:
        return None
    try:
        record_id = library_id(message.chat_id, unique)
    except ValueError:
        return None
    record = LibraryRecord(
        id=record_id,
        chat_id=message.chat_id,
        message_id=message.message_id,
        sender_id=sender.id,
        date=int(message.date.timestamp()),
        file_id=file_id,
        file_unique_id=unique,
        caption=message.caption or "",
        is_document=not message.photo,
    )
    return Posted(record, download.file_id)


async def capture(update: Update, context: Context) -> None:
    """Queue the picture of a message posted in a chat whose library is on (the gatekeeper
    calls this for every update, before deciding whether the message is for the bot)."""
    data = context.bot_data
    message = update.message
    if data.ingest is None or message is None or not data.library_chats.enabled(message.chat_id):
        return
    user = update.effective_user
    if user is None or (data.allowed_user_ids and user.id not in data.allowed_user_ids):
        return
    picture = posted(message, data.services.encoder.input_size)
    if picture is None or data.ingest.offer(picture):
        return
    log.warning(
        "library of chat %s: queue full, message %s not added", message.chat_id, message.message_id
    )
    if data.behind.allow(message.chat_id):
        with contextlib.suppress(TelegramError):
            await message.reply_text(texts.BEHIND)


async def library_command(update: Update, context: Context) -> None:
    """/library, /library on|off|clear."""
    message = update.effective_message
    service = context.bot_data.services.library
    if service is None or service.problem:
        await message.reply_text(service.problem if service else texts.OFF_ON_THIS_BOT)
        return
    action = context.args[0].lower() if context.args else ""
    chat_id = message.chat_id
    if action == "":
        on = context.bot_data.library_chats.enabled(chat_id)
        await message.reply_text(texts.state(on, await service.count(chat_id)))
    elif action not in ("on", "off", "clear"):
        await message.reply_text(texts.USAGE)
    elif not await may_manage(update, context):
        await message.reply_text(texts.ADMINS_ONLY)
    elif action == "clear":
        await _ask_clear(message, context)
    else:
        context.bot_data.library_chats.switch(chat_id, action == "on", update.effective_user.id)
        visible = action == "off" or await _sees_posts(message, context)
        count = await service.count(chat_id)
        await message.reply_text(texts.switched(action == "on", count, visible=visible))


async def may_manage(update: Update, context: Context) -> bool:
    """Whether the sender may switch or clear the chat's library: the user of a private
    chat; a group's administrators (an anonymous one posts as the group itself)."""
    message = update.effective_message
    if not groups.is_in_group(message):
        return True
    if message.sender_chat is not None:
        return message.sender_chat.id == message.chat_id
    return await _is_manager(context, message.chat_id, update.effective_user.id)


async def _is_manager(context: Context, chat_id: int, user_id: int) -> bool:
    try:
        member = await context.bot.get_chat_member(chat_id, user_id)
    except TelegramError as err:
        log.warning("could not ask Telegram who manages chat %s: %s", chat_id, err)
        return False  # fail closed
    return member.status in MANAGERS


async def _sees_posts(message: Message, context: Context) -> bool:
    """Whether the bot receives every photo posted in the chat: always in a private chat; in
    a group when its privacy mode is off or it is an administrator there."""
    if not groups.is_in_group(message) or context.bot.can_read_all_group_messages:
        return True
    return await _is_manager(context, message.chat_id, context.bot.id)


async def _ask_clear(message: Message, context: Context) -> None:
    count = await context.bot_data.services.library.count(message.chat_id)
    if not count:
        await message.reply_text(texts.CLEAR_EMPTY)
        return
    nonce = context.bot_data.clears.ask(message.chat_id)
    buttons = [
        InlineKeyboardButton(texts.CLEAR_LABEL.format(count=count), callback_data=f"lc:{nonce}:y"),
        InlineKeyboardButton(texts.CANCEL_LABEL, callback_data=f"lc:{nonce}:n"),
    ]
    await message.reply_text(
        texts.CLEAR_ASK.format(count=texts.pictures(count)),
        reply_markup=InlineKeyboardMarkup([buttons]),
    )


async def clear_button(update: Update, context: Context) -> None:
    """The answer to "Remove all N?": only in the chat it was asked in, by whoever may clear."""
    query = update.callback_query
    match = _CLEAR.fullmatch(str(query.data or ""))
    message = query.message
    if match is None or message is None:
        await query.answer(texts.CLEAR_EXPIRED)
        return
    chat_id = message.chat.id
    if groups.is_in_group(message) and not await _is_manager(context, chat_id, query.from_user.id):
        await query.answer(texts.ADMINS_ONLY, show_alert=True)
        return
    if not context.bot_data.clears.take(match.group(1), chat_id):
        await query.answer(texts.CLEAR_EXPIRED)
        return
    await query.answer()
    if match.group(2) == "n":
        await query.edit_message_text(texts.CLEAR_CANCELLED)
        return
    removed = await context.bot_data.services.library.clear(chat_id)
    log.info("library of chat %s cleared: %d pictures", chat_id, removed)
    await query.edit_message_text(texts.CLEAR_DONE.format(count=texts.pictures(removed)))


async def save(update: Update, context: Context) -> None:
    """/save as a reply to a picture: add it to the chat's library (even with it off)."""
    message = update.effective_message
    target = await _replied_picture(message, context, "/save")
    if target is None:
        return
    picture = posted(target, context.bot_data.services.encoder.input_size)
    if picture is None:
        await message.reply_text(texts.TOO_BIG)
        return
    try:
        added = await context.bot_data.ingest.save(picture)
    except asyncio.QueueFull:
        await message.reply_text(texts.BEHIND)
        return
    if not added.stored:
        await message.reply_text(texts.ALREADY)
        return
    count = await context.bot_data.services.library.count(message.chat_id)
    await message.reply_text(texts.SAVED.format(count=texts.pictures(count)))


async def forget(update: Update, context: Context) -> None:
    """/forget as a reply to a picture: remove it from the chat's library."""
    message = update.effective_message
    target = await _replied_picture(message, context, "/forget")
    if target is None:
        return
    service = context.bot_data.services.library
    chat_id = message.chat_id
    record = await service.record(chat_id, library_id(chat_id, groups.unique_id(target)))
    if record is None:
        await message.reply_text(texts.NOT_THERE)
        return
    user_id = update.effective_user.id
    if record.sender_id != user_id and not await may_manage(update, context):
        await message.reply_text(texts.FORGET_NOT_YOURS)
        return
    await service.forget(chat_id, [record.id])
    left = await service.count(chat_id)
    await message.reply_text(texts.FORGOTTEN.format(count=texts.pictures(left)))


async def _replied_picture(message: Message, context: Context, command: str) -> Message | None:
    """The picture `message` replies to; None (after saying why) when there is none or the
    chat cannot have a library."""
    service = context.bot_data.services.library
    if service is None or service.problem:
        await message.reply_text(service.problem if service else texts.OFF_ON_THIS_BOT)
        return None
    target = message.reply_to_message
    if target is None or not groups.has_picture(target):
        await message.reply_text(texts.REPLY_TO_PICTURE.format(command=command))
        return None
    return target


async def stats_of(chat_id: int, context: Context) -> str:
    """/stats' line on this chat's library ("" without libraries)."""
    service = context.bot_data.services.library
    if service is None or not service.available:
        return ""
    count = await service.count(chat_id)
    return "\n" + texts.stats_line(context.bot_data.library_chats.enabled(chat_id), count)
