"""Sending results: albums that reuse Telegram file_ids, and a chat action while working."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from telegram import Bot, InputMediaPhoto, Message
from telegram.constants import ChatAction
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
) -> None:
    """Answer `message` with `hits` as one album (one photo when there is one hit), in rank
    order, each captioned; sends by file_id what Telegram already has, and reads the rest
    through `files` (only indexed pictures leave the host)."""
    if not hits:
        await message.reply_text(NO_RESULTS)
        return
    cached = await asyncio.to_thread(file_ids.get_many, [hit.version for hit in hits])
    try:
        sent, uploaded = await _send(message, hits, cached, files)
    except BadRequest as err:
        if not cached:
            raise
        # A stale file_id (e.g. the bot's token changed): forget them all, upload afresh.
        log.warning("sending by file_id failed (%s): uploading instead", err)
        await asyncio.to_thread(file_ids.forget, cached)
        sent, uploaded = await _send(message, hits, {}, files)
    remembered = {
        hit.version: msg.photo[-1].file_id
        for hit, msg in zip(uploaded, sent, strict=True)
        if msg.photo
    }
    if remembered:
        await asyncio.to_thread(file_ids.put_many, remembered)


async def _send(
    message: Message, hits: list[Hit], cached: dict[str, str], files: IndexedFiles
) -> tuple[list[Message], list[Hit]]:
    """Send the album; returns, aligned, the sent message of each newly uploaded hit."""
    sources = await asyncio.to_thread(_sources, hits, cached, files)
    media = [
        InputMediaPhoto(source, caption=hit_caption(rank, hit))
        for rank, (hit, source) in enumerate(sources, 1)
    ]
    if not media:
        await message.reply_text(NO_RESULTS)
        return [], []
    if len(media) == 1:
        one = media[0]
        sent = [await message.reply_photo(one.media, caption=one.caption)]
    else:
        sent = list(await message.reply_media_group(media))
    new = [
        (hit, msg)
        for (hit, source), msg in zip(sources, sent, strict=True)
        if hit.version not in cached
    ]
    return [msg for _, msg in new], [hit for hit, _ in new]


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
