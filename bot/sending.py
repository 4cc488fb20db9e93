"""Sending results: albums that reuse Telegram file_ids, and a chat action while working."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bot.file_ids import FileIdCache, picture_key
from bot.library_texts import library_caption
from bot.limits import DOWNLOAD_LIMIT
from bot.replies import hit_caption
from core.errors import BadImage
from core.images import photo_for_upload
from core.search.sendable_files import RefusedFile, SendableFiles
from core.search.service import Hit

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


@dataclass(frozen=True)
class AlbumTarget:
    """Where an album goes and how: the chat, the rank of its first picture, the message it
    replies to (in groups), and whether it comes without a notification."""

    bot: Bot
    chat_id: int
    first_rank: int = 1
    reply_to: int | None = None
    quiet: bool = False
    posters: dict[int, str] = field(default_factory=dict)
    """Who posted the chat library's pictures (sender id → name), for their captions."""


async def send_album(
    target: AlbumTarget, hits: list[Hit], file_ids: FileIdCache, files: SendableFiles
) -> list[Hit]:
    """Send `hits` to `target` as one album (one photo when there is one hit), in rank order
    from `target.first_rank`, each captioned; sends by file_id what Telegram already has, and
    reads the rest through `files` (only indexed pictures leave the host). Returns the hits
    sent (refused or unreadable files are left out; nothing is sent when none is left)."""
    if not hits:
        return []
    keys = await asyncio.to_thread(file_keys, hits, files)
    cached = await asyncio.to_thread(file_ids.get_many, keys.values())
    downloads = await _library_documents(target.bot, hits, keys, cached)
    try:
        sources, sent = await _send(target, hits, _Known(keys, cached, downloads), files)
    except BadRequest as err:
        refused = await _refused_library_files(target.bot, hits)
        if refused:  # a chat library's picture Telegram no longer has: leave it out
            log.warning("%d library pictures' file_ids are refused now: left out", len(refused))
            hits = [hit for hit in hits if hit.id not in refused]
        elif cached:  # a stale file_id (e.g. the bot's token changed): upload afresh
            log.warning("sending by file_id failed (%s): uploading instead", err)
            await asyncio.to_thread(file_ids.forget, cached)
            cached = {}
        else:
            raise
        sources, sent = await _send(target, hits, _Known(keys, cached, downloads), files)
    remembered = {
        source.key: msg.photo[-1].file_id
        for source, msg in zip(sources, sent, strict=True)
        if source.key not in cached and msg.photo and isinstance(source.media, bytes)
    }
    if remembered:
        await asyncio.to_thread(file_ids.put_many, remembered)
    return [source.hit for source in sources]


def _library_source(hit: Hit, key: str, downloads: dict[str, bytes]) -> _Source | None:
    """A chat library's picture: by its photo's file_id, or its file's bytes as a photo."""
    assert hit.library is not None
    if not hit.library.is_document:
        return _Source(hit, key, hit.library.file_id)
    try:
        return _Source(hit, key, photo_for_upload(downloads[hit.id]))
    except (KeyError, BadImage) as err:
        log.warning("cannot send library picture %s: %s", hit.id, err)
        return None


async def _library_documents(
    bot: Bot, hits: list[Hit], keys: dict[str, str], cached: dict[str, str]
) -> dict[str, bytes]:
    """The bytes of the chat library's pictures posted as files that Telegram has no photo
    of yet (sent once as a photo, their photo's file_id is cached like an indexed file's)."""
    downloads = {}
    for hit in hits:
        library = hit.library
        if library is None or not library.is_document or keys[hit.id] in cached:
            continue
        try:
            file = await bot.get_file(library.file_id)
            if file.file_size and file.file_size > DOWNLOAD_LIMIT:
                continue
            downloads[hit.id] = bytes(await file.download_as_bytearray())
        except TelegramError as err:
            log.warning("cannot download library picture %s: %s", hit.id, err)
    return downloads


async def _refused_library_files(bot: Bot, hits: list[Hit]) -> set[str]:
    """The ids of the library hits whose file_id Telegram no longer takes."""
    refused = set()
    for hit in hits:
        if hit.library is None:
            continue
        try:
            await bot.get_file(hit.library.file_id)
        except BadRequest:
            refused.add(hit.id)
    return refused


def file_keys(hits: list[Hit], files: SendableFiles) -> dict[str, str]:
    """hit id → the file_id cache key of the file its path leads to now (see `picture_key`);
    hits whose file may not be sent are left out (`files` logs them). Blocking: call it in
    a worker thread."""
    keys = {}
    for hit in hits:
        if hit.library is not None:  # sent by its Telegram file_id, never read from disk
            keys[hit.id] = f"library\0{hit.id}"
            continue
        identity = files.identity(hit.id, hit.path)
        if identity is not None:
            keys[hit.id] = picture_key(hit.id, identity)
    return keys


@dataclass(frozen=True)
class _Known:
    keys: dict[str, str]
    """hit id → file_id cache key, for the hits whose file may be sent."""
    cached: dict[str, str]
    """cache key → file_id, for the files Telegram already has."""
    downloads: dict[str, bytes]
    """hit id → the bytes of a chat library's picture posted as a file, to upload as a photo
    (a document's file_id cannot be sent as one)."""


@dataclass(frozen=True)
class _Source:
    hit: Hit
    key: str
    media: str | bytes
    """A file_id, or the bytes to upload."""


async def _send(
    target: AlbumTarget, hits: list[Hit], known: _Known, files: SendableFiles
) -> tuple[list[_Source], list[Message]]:
    """Send the album; returns, aligned, what was sent of each hit and its message."""
    sources = await asyncio.to_thread(_sources, hits, known, files)
    media = [
        InputMediaPhoto(source.media, caption=album_caption(rank, source.hit, target.posters))
        for rank, source in enumerate(sources, target.first_rank)
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


def album_caption(rank: int, hit: Hit, posters: dict[int, str]) -> str:
    """A picture's caption in an album: 📚, the date and who posted it for a chat library's
    picture."""
    if hit.library is None:
        return hit_caption(rank, hit)
    return library_caption(rank, hit, posters.get(hit.library.sender_id))


def _sources(hits: list[Hit], known: _Known, files: SendableFiles) -> list[_Source]:
    """A file_id or the bytes to upload for each hit; refused or unreadable files, and files
    that do not decode as a picture, are left out (`files` logs refusals)."""
    sources: list[_Source] = []
    for hit in hits:
        key = known.keys.get(hit.id)
        if key is None:
            continue
        if key in known.cached:
            sources.append(_Source(hit, key, known.cached[key]))
            continue
        if hit.library is not None:
            source = _library_source(hit, key, known.downloads)
            if source is not None:
                sources.append(source)
            continue
        try:
            read = files.read(hit.id, hit.path)
            upload = photo_for_upload(read.data)
        except RefusedFile:
            continue
        except BadImage as err:
            log.warning("cannot send index entry %s: %s", hit.id, err)
            continue
        sources.append(_Source(hit, picture_key(hit.id, read.identity), upload))
    return sources
