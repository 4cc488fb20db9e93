"""Sending results: albums that reuse Telegram file_ids, and a chat action while working."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, TelegramError

from bot.file_ids import FileIdCache
from bot.replies import NO_RESULTS, hit_caption
from core.errors import BadImage
from core.images import photo_for_upload
from core.indexed_files import IndexedFiles, RefusedFile
from core.search import Hit

log = logging.getLogger(__name__)

CHAT_ACTION_EVERY_S = 4.5
"""Telegram shows a chat action for 5 s: repeat it a little sooner while work goes on."""


@contextlib.asynccontextmanager
async def chat_action(
    bot: Bot, chat_id: int, action: str = ChatAction.UPLOAD_PHOTO
) -> AsyncIterator[None]:
    """Show "sending photo…" (or `action`) in the chat until the block ends."""

    async def keep_showing() -> None:
        while True:
            with contextlib.suppress(TelegramError):
                await bot.send_chat_action(chat_id, action)
            await asyncio.sleep(CHAT_ACTION_EVERY_S)

    task = asyncio.create_task(keep_showing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def send_hits(
    message: Message, hits: list[Hit], file_ids: FileIdCache, files: IndexedFiles
) -> list[Hit]:
    """Answer `message` with `hits` as one album (see `send_album`), or say nothing was found
    when no picture could be sent."""
    reply_to = None if message.chat.type == ChatType.PRIVATE else message.message_id
    sent = await send_album(
        message.get_bot(), message.chat_id, hits, file_ids, files, reply_to=reply_to
    )
    if not sent:
        await message.reply_text(NO_RESULTS)
    return sent


async def send_album(
    bot: Bot,
    chat_id: int,
    hits: list[Hit],
    file_ids: FileIdCache,
    files: IndexedFiles,
    *,
    first_rank: int = 1,
    reply_to: int | None = None,
    quiet: bool = False,
) -> list[Hit]:
    """Send `hits` to `chat_id` as one album (one photo when there is one hit), in rank order
    from `first_rank`, each captioned; sends by file_id what Telegram already has, and reads
    the rest through `files` (only indexed pictures leave the host). Returns the hits sent
    (refused or unreadable files are left out; nothing is sent when none is left)."""
    if not hits:
        return []
    target = _Target(bot, chat_id, first_rank, reply_to, quiet)
    cached = await asyncio.to_thread(file_ids.get_many, [hit.version for hit in hits])
    try:
        sources, sent = await _send(target, hits, cached, files)
    except BadRequest as err:
        if not cached:
            raise
        # A stale file_id (e.g. the bot's token changed): forget them all, upload afresh.
        log.warning("sending by file_id failed (%s): uploading instead", err)
        await asyncio.to_thread(file_ids.forget, cached)
        cached = {}
        sources, sent = await _send(target, hits, cached, files)
    remembered = {
        hit.version: msg.photo[-1].file_id
        for (hit, _), msg in zip(sources, sent, strict=True)
        if hit.version not in cached and msg.photo
    }
    if remembered:
        await asyncio.to_thread(file_ids.put_many, remembered)
    return [hit for hit, _ in sources]


@dataclass(frozen=True)
class _Target:
    bot: Bot
    chat_id: int
    first_rank: int
    reply_to: int | None
    quiet: bool


async def _send(
    target: _Target, hits: list[Hit], cached: dict[str, str], files: IndexedFiles
) -> tuple[list[tuple[Hit, str | bytes]], list[Message]]:
    """Send the album; returns, aligned, what was sent of each hit and its message."""
    sources = await asyncio.to_thread(_sources, hits, cached, files)
    media = [
        InputMediaPhoto(source, caption=hit_caption(rank, hit))
        for rank, (hit, source) in enumerate(sources, target.first_rank)
    ]
    if not media:
        return [], []
    reply = (
        ReplyParameters(target.reply_to, allow_sending_without_reply=True)
        if target.reply_to is not None
        else None
    )
    common = {
        "chat_id": target.chat_id,
        "reply_parameters": reply,
        "disable_notification": target.quiet,
    }
    if len(media) == 1:
        one = media[0]
        sent = [await target.bot.send_photo(photo=one.media, caption=one.caption, **common)]
    else:
        sent = list(await target.bot.send_media_group(media=media, **common))
    return sources, sent


def _sources(
    hits: list[Hit], cached: dict[str, str], files: IndexedFiles
) -> list[tuple[Hit, str | bytes]]:
    """A file_id or the bytes to upload for each hit; refused or unreadable files are left
    out (`files` logs refusals)."""
    sources: list[tuple[Hit, str | bytes]] = []
    for hit in hits:
        if hit.version in cached:
            sources.append((hit, cached[hit.version]))
            continue
        try:
            sources.append((hit, photo_for_upload(files.read(hit.id, hit.path))))
        except RefusedFile:
            pass
        except BadImage as err:
            log.warning("cannot send index entry %s: %s", hit.id, err)
    return sources
