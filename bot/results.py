"""A search as the chat shows it: an album, then one message that says how the query was read
and where we are ("a red circle — 1–5", "6–8 of 8"), with buttons under it (media groups
cannot carry a keyboard): More ▸, Similar <rank>, Full size. And what each button does.

A Similar search is named after the search its picture came from ("like #2 of a red
circle"), and never shows that picture itself (core leaves it out of every page).

The handlers call `show_search` for a new search and `refusal`/`run_press` for a press;
each search's state lives in `bot.saved_searches`, behind the token its buttons carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MaybeInaccessibleMessage,
    ReplyParameters,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bot import library_texts, replies
from bot.saved_searches import MAX_LIKES, Album, Press, SearchContext, Shown
from bot.sending import AlbumTarget, chat_action, send_album
from core.errors import BadImage
from core.search.service import Hit, SearchPage

if TYPE_CHECKING:
    from bot.services import Results
    from bot.state import BotData

log = logging.getLogger(__name__)

SIMILAR_PER_ROW = 5


@dataclass(frozen=True)
class Chat:
    """Where results go, and who asked."""

    bot: Bot
    chat_id: int
    user_id: int
    reply_to: int | None = None


async def show_search(
    chat: Chat, results: Results, data: BotData, likes: tuple[int, ...] = ()
) -> None:
    """The first page of a new search, with its buttons; `likes`: a Similar search's ranks
    pressed (`SearchContext.likes`)."""
    context = SearchContext(
        query=results.prepared.to_json(),
        chat_id=chat.chat_id,
        user_id=chat.user_id,
        k=data.services.settings.top_k,
        likes=likes[:MAX_LIKES],
    )
    await show_page(chat, context, results.page, data)


def heading_of(context: SearchContext, reading: str = "") -> replies.Heading:
    """What `context`'s search is called in the chat (`reading`: its page's, when known)."""
    return replies.Heading(reading or context.prepared.reading, context.likes)


async def show_page(chat: Chat, context: SearchContext, page: SearchPage, data: BotData) -> None:
    """One page of `context`'s search: the album, then the message with the buttons; the
    search is stored with this page as its last."""
    heading = heading_of(context, page.reading)
    if not page.hits:
        await _show_empty(chat, replace(context, more=False), page, heading, data)
        return
    senders = {hit.library.sender_id for hit in page.hits if hit.library is not None}
    posters = await data.posters.of(chat.bot, chat.chat_id, senders) if chat.chat_id < 0 else {}
    target = AlbumTarget(
        chat.bot, chat.chat_id, first_rank=page.offset + 1, reply_to=chat.reply_to, posters=posters
    )
    sent = await send_album(target, page.hits, data.file_ids, data.services.files)
    await _forget_refused(chat, page.hits, sent, data)
    album = Album(context.next_album, page.offset + 1, tuple(Shown.of(hit) for hit in sent))
    context = replace(context, offset=page.offset, more=page.more).with_album(album)
    await asyncio.to_thread(data.searches.put, context)
    last = page.offset + len(page.hits)
    await chat.bot.send_message(
        chat.chat_id,
        replies.results_text(heading, page.offset + 1, last, page.found, more=page.more),
        reply_markup=keyboard(context, album),
    )


async def _show_empty(
    chat: Chat, context: SearchContext, page: SearchPage, heading: replies.Heading, data: BotData
) -> None:
    """No hits: past the last page, nothing above MIN_SCORE (offer the nearest anyway), or
    nothing at all."""
    markup = None
    if page.offset > 0:
        text = replies.all_found(heading)
        await asyncio.to_thread(data.searches.put, context)
    elif page.below_min_score > 0 and not context.nearest_anyway:
        text = replies.nothing_close(heading)
        await asyncio.to_thread(data.searches.put, context)
        nearest = Press("nearest", context.token).data()
        markup = InlineKeyboardMarkup(
            [[InlineKeyboardButton(replies.NEAREST_LABEL, callback_data=nearest)]]
        )
    else:
        text = replies.no_results(heading)
    reply = None
    if chat.reply_to is not None:
        reply = ReplyParameters(chat.reply_to, allow_sending_without_reply=True)
    await chat.bot.send_message(chat.chat_id, text, reply_markup=markup, reply_parameters=reply)


async def _forget_refused(chat: Chat, hits: list[Hit], sent: list[Hit], data: BotData) -> None:
    """Remove from the chat's library its pictures Telegram no longer sends (`send_album`
    leaves them out)."""
    shown = {hit.id for hit in sent}
    gone = [hit.id for hit in hits if hit.library is not None and hit.id not in shown]
    if gone and data.services.library is not None:
        removed = await data.services.library.forget(chat.chat_id, gone)
        log.info(
            "library of chat %s: removed %d pictures Telegram no longer has", chat.chat_id, removed
        )


def keyboard(context: SearchContext, album: Album) -> InlineKeyboardMarkup | None:
    """Similar <rank> for each picture of `album`; 📚 #<rank> ↩ for each picture of the
    chat's library (a reply to the message that posted it); Full size; More ▸ while results
    follow."""
    similar = [
        InlineKeyboardButton(
            replies.similar_label(album.first_rank + i),
            callback_data=Press("similar", context.token, album.number, i + 1).data(),
        )
        for i in range(len(album.pictures))
    ]
    jumps = [
        InlineKeyboardButton(
            library_texts.jump_label(album.first_rank + i),
            callback_data=Press("jump", context.token, album.number, i + 1).data(),
        )
        for i, picture in enumerate(album.pictures)
        if picture.message_id
    ]
    rows = [similar[i : i + SIMILAR_PER_ROW] for i in range(0, len(similar), SIMILAR_PER_ROW)]
    rows += [jumps[i : i + SIMILAR_PER_ROW] for i in range(0, len(jumps), SIMILAR_PER_ROW)]
    last = []
    if album.pictures:
        full = Press("full", context.token, album.number).data()
        last.append(InlineKeyboardButton(replies.FULL_SIZE_LABEL, callback_data=full))
    if context.more:
        more = Press("more", context.token).data()
        last.append(InlineKeyboardButton(replies.MORE_LABEL, callback_data=more))
    if last:
        rows.append(last)
    return InlineKeyboardMarkup(rows) if rows else None


def refusal(press: Press | None, context: SearchContext | None, chat_id: int | None) -> str | None:
    """Why a press cannot be done (the text to answer it with), or None when it can."""
    if press is None:
        return replies.BUTTON_BROKEN
    if context is None:
        return replies.BUTTON_EXPIRED
    if context.chat_id != chat_id:
        return replies.BUTTON_BROKEN
    if press.action in ("similar", "full", "jump"):
        album = context.album(press.album)
        if album is None:
            return replies.BUTTON_EXPIRED
        if press.action in ("similar", "jump") and press.index > len(album.pictures):
            return replies.BUTTON_BROKEN
        if press.action == "jump" and not album.pictures[press.index - 1].message_id:
            return replies.BUTTON_BROKEN
    return None


async def run_press(
    press: Press, context: SearchContext, chat: Chat, data: BotData, pressed: object
) -> None:
    """Do what the button says (the press was answered and checked by `refusal`)."""
    if press.action == "more":
        await _drop_buttons(pressed, ("m:",))  # the next page carries its own
        await _more(chat, context, data)
    elif press.action == "nearest":
        await _drop_buttons(pressed, ("n:",))
        context = replace(context, nearest_anyway=True)
        async with chat_action(chat.bot, chat.chat_id):
            page = await data.services.page(
                context.prepared, k=context.k, nearest_anyway=True, chat_id=context.chat_id
            )
            await show_page(chat, context, page, data)
    elif press.action == "similar":
        album = context.album(press.album)
        assert album is not None
        picture = album.pictures[press.index - 1]
        rank = album.first_rank + press.index - 1
        async with chat_action(chat.bot, chat.chat_id):
            similar = await data.services.similar(picture.id, chat_id=context.chat_id)
            found = _named_after(similar, context)
            await show_search(chat, found, data, likes=(rank, *context.likes))
    elif press.action == "jump":
        album = context.album(press.album)
        assert album is not None
        await _jump(chat, album.pictures[press.index - 1], album.first_rank + press.index - 1, data)
    else:
        album = context.album(press.album)
        assert album is not None
        await _full_size(chat, album, data)


def _named_after(found: Results, parent: SearchContext) -> Results:
    """A Similar search's results read as the search it was pressed under (the first one's,
    for a Similar of a Similar): core reads it "like picture <id>", an id nobody knows."""
    reading = parent.prepared.reading
    return replace(
        found,
        prepared=replace(found.prepared, reading=reading),
        page=replace(found.page, reading=reading),
    )


async def _more(chat: Chat, context: SearchContext, data: BotData) -> None:
    if not context.more:
        await chat.bot.send_message(chat.chat_id, replies.all_found(heading_of(context)))
        return
    async with chat_action(chat.bot, chat.chat_id):
        page = await data.services.page(
            context.prepared,
            k=context.k,
            offset=context.offset + context.k,
            nearest_anyway=context.nearest_anyway,
            chat_id=context.chat_id,
        )
        await show_page(chat, context, page, data)


async def _full_size(chat: Chat, album: Album, data: BotData) -> None:
    """The original files of `album`, one document each, read through the same guard as
    photos; files over 50 MB (or gone, or refused) are skipped with a note."""
    skipped = []
    async with chat_action(chat.bot, chat.chat_id, ChatAction.UPLOAD_DOCUMENT):
        for rank, picture in enumerate(album.pictures, album.first_rank):
            if picture.message_id:  # a chat library's: its original is the message posted
                await _jump(chat, picture, rank, data)
                continue
            try:
                original = await data.services.original(picture.id, picture.path)
            except BadImage as err:  # RefusedFile included
                log.info("full size of %s not sent: %s", picture.id, err)
                skipped.append(rank)
                continue
            if len(original) > replies.DOCUMENT_LIMIT:
                skipped.append(rank)
                continue
            await chat.bot.send_document(
                chat.chat_id,
                original,
                filename=_file_name(picture),
                caption=replies.full_size_caption(rank),
            )
    if skipped:
        await chat.bot.send_message(chat.chat_id, replies.full_size_skipped(skipped))


async def _jump(chat: Chat, picture: Shown, rank: int, data: BotData) -> None:
    """A reply to the message that posted a library picture (a tap on its quote jumps
    there), saying when and by whom; or why not, when the picture or its message is gone."""
    library = data.services.library
    record = await library.record(chat.chat_id, picture.id) if library is not None else None
    if record is None:
        await chat.bot.send_message(chat.chat_id, replies.BUTTON_EXPIRED)
        return
    names = await data.posters.of(chat.bot, chat.chat_id, {record.sender_id})
    poster = names.get(record.sender_id) if chat.chat_id < 0 else None
    try:
        await chat.bot.send_message(
            chat.chat_id,
            library_texts.original(rank, record.date, poster),
            reply_parameters=ReplyParameters(record.message_id),
        )
    except BadRequest:
        await chat.bot.send_message(chat.chat_id, library_texts.ORIGINAL_GONE)


def _file_name(picture: Shown) -> str:
    name = os.path.basename(picture.path.replace("\\", "/"))
    return name[-100:] if name else f"{picture.id}.jpg"


async def _drop_buttons(pressed: object, prefixes: tuple[str, ...]) -> None:
    """Take the buttons whose data starts with `prefixes` off the message pressed. Best
    effort."""
    if not isinstance(pressed, MaybeInaccessibleMessage) or not hasattr(pressed, "reply_markup"):
        return
    markup = pressed.reply_markup
    if markup is None:
        return
    rows = [
        [b for b in row if not str(b.callback_data or "").startswith(prefixes)]
        for row in markup.inline_keyboard
    ]
    rows = [row for row in rows if row]
    with contextlib.suppress(TelegramError):
        await pressed.edit_reply_markup(InlineKeyboardMarkup(rows) if rows else None)
