"""Inline mode: `@yourbot a red bus` in any chat lists matching photos to pick from.

Telegram shows inline results by file_id (InlineQueryResultCachedPhoto), so a picture must
have been sent somewhere first: pictures without a cached file_id are uploaded once, as an
album, to STORAGE_CHAT_ID (a private channel where the bot is an admin), and their file_ids
join the cache. Without STORAGE_CHAT_ID only pictures the bot has sent before are listed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from telegram import Bot, InlineQuery, InlineQueryResultCachedPhoto
from telegram.constants import ParseMode
from telegram.error import TelegramError

from bot import replies
from bot.sending import AlbumTarget, file_keys, send_album
from core.search.service import MAX_RESULTS, Hit, clean_query

if TYPE_CHECKING:
    from bot.state import BotData

log = logging.getLogger(__name__)

PAGE = 10
"""Results per inline page (Telegram takes up to 50; uploads for new pictures go as one
album of at most 10). The pages are `SearchService.page`'s, as the More button's: the same
results in the same order, full until the results end."""
MAX_OFFSET = MAX_RESULTS
"""Deeper pages are not offered, as More stops there too (the offset comes back from
clients: untrusted)."""
CACHE_TIME_S = 10


def parse_offset(offset: str) -> int | None:
    """The offset an inline query continues from ("" = the first page), or None when it is
    not one this bot gave."""
    if offset == "":
        return 0
    if not offset.isdigit() or len(offset) > 4:
        return None
    value = int(offset)
    return value if value % PAGE == 0 and value <= MAX_OFFSET else None


async def answer(query: InlineQuery, data: BotData) -> None:
    """Answer an inline query with a page of matching photos and the offset of the next."""
    text = " ".join(query.query.split())
    offset = parse_offset(query.offset)
    if not text or offset is None:
        await query.answer([], cache_time=CACHE_TIME_S, is_personal=True)
        return
    results = await data.services.search_text(clean_query(text), k=PAGE, offset=offset)
    page = results.page
    file_ids = await photo_file_ids(query.get_bot(), page.hits, data)
    photos = [
        InlineQueryResultCachedPhoto(
            id=str(rank),
            photo_file_id=file_ids[hit.id],
            caption=replies.hit_caption(rank, hit),
            parse_mode=ParseMode.HTML,
        )
        for rank, hit in enumerate(page.hits, offset + 1)
        if hit.id in file_ids
    ]
    more = page.more and offset + PAGE <= MAX_OFFSET
    await query.answer(
        photos,
        cache_time=CACHE_TIME_S,
        is_personal=True,
        next_offset=str(offset + PAGE) if more else None,  # ExtBot sends "" as "[]"
    )


async def photo_file_ids(bot: Bot, hits: list[Hit], data: BotData) -> dict[str, str]:
    """hit id → file_id for `hits`: from the cache, after uploading the missing ones to the
    storage chat (when there is one). Hits whose file may not be sent are left out."""
    keys = await asyncio.to_thread(file_keys, hits, data.services.files)
    known = await _cached(keys, data)
    missing = [hit for hit in hits if hit.id in keys and hit.id not in known]
    if not missing:
        return known
    if data.storage_chat_id is None:
        if not data.inline_storage_warned:
            data.inline_storage_warned = True
            log.warning(
                "inline mode lists only pictures sent before: set STORAGE_CHAT_ID (a private "
                "channel where the bot is an admin) to upload the others there once"
            )
        return known
    try:
        target = AlbumTarget(bot, data.storage_chat_id, quiet=True)
        await send_album(target, missing, data.file_ids, data.services.files)
    except TelegramError as err:
        log.error("cannot upload to STORAGE_CHAT_ID=%s: %s", data.storage_chat_id, err)
        return known
    return await _cached(keys, data)


async def _cached(keys: dict[str, str], data: BotData) -> dict[str, str]:
    """hit id → file_id of the hits (`keys`: hit id → cache key) Telegram already has."""
    cached = await asyncio.to_thread(data.file_ids.get_many, keys.values())
    return {hit_id: cached[key] for hit_id, key in keys.items() if key in cached}
