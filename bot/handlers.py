"""Thin async handlers: parse the update, await a service (in a worker thread), reply.

Domain errors (`core.errors`) are not caught here: they reach `on_error`, which answers
with a clear message; anything unexpected is logged there with the update. What users write
(texts, captions, questions, inline queries) and their names are logged only at DEBUG:
above it an update is its ids and kind (`describe_update`).
"""

from __future__ import annotations

import asyncio
import logging
import re

from telegram import Message, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import ApplicationHandlerStop
from telegram.helpers import effective_message_type

from bot import groups, inline, library, library_texts, replies, results
from bot.limits import DOWNLOAD_LIMIT
from bot.saved_searches import parse_press
from bot.sending import chat_action
from bot.state import BotData, Context
from core.errors import ModelUnavailable, SearchBotError
from core.library.records import library_id
from core.search.service import MAX_QUERY_CHARS, clean_query

log = logging.getLogger(__name__)

ASK = re.compile(r"^/ask(?:@\w+)?(?:\s+(.*))?$", re.DOTALL | re.IGNORECASE)
"""/ask, /ask@SomeBot, with or without a question after it."""


class FileTooBig(SearchBotError):
    """A file over Telegram's download limit for bots."""


async def gatekeeper(update: Update, context: Context) -> None:
    """Runs before every handler and fails closed: drops updates with no user and group
    messages not meant for the bot (silently), refuses users not allowed and users over the
    rate limit. A refused update is stopped even when the refusal cannot be sent."""
    user = update.effective_user
    message = update.effective_message if update.callback_query is None else None
    if user is None:
        log.debug("dropped update %s: it has no user", update.update_id)
        raise ApplicationHandlerStop
    data = context.bot_data
    await library.capture(update, context)  # a picture posted where the library is on
    # A button press or an inline query is meant for the bot; a group message may not be.
    if message is not None and not groups.is_for_bot(message, _me(context)):
        raise ApplicationHandlerStop
    if data.allowed_user_ids and user.id not in data.allowed_user_ids:
        log.info("refused user %s (not in ALLOWED_USER_IDS)", user.id)
        await refuse(update, data, replies.NOT_ALLOWED.format(user_id=user.id))
        raise ApplicationHandlerStop
    retry_in = data.limiter.check(user.id)
    if retry_in is not None:
        log.info("user %s is over the rate limit", user.id)
        await refuse(update, data, replies.rate_limited(retry_in))
        raise ApplicationHandlerStop


def _me(context: Context) -> groups.Me:
    """This bot, for telling which group messages are for it: its name, its commands, and
    whether it answers questions about photos."""
    bot = context.bot
    services = context.bot_data.services
    names = COMMAND_NAMES | set(library.COMMANDS) if services.library else COMMAND_NAMES
    return groups.Me(bot.username, bot.id, frozenset(names), questions=services.ask_enabled)


async def refuse(update: Update, data: BotData, text: str) -> None:
    """Tell the user why they get nothing: a button press and an inline query are always
    answered (else the client keeps waiting), a message at most once a minute each. Never
    raises (the caller stops the update whatever happens here)."""
    user = update.effective_user
    assert user is not None, "the gatekeeper drops updates without a user"
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
        elif update.inline_query is not None:
            await update.inline_query.answer([], cache_time=0, is_personal=True)
        elif (message := update.effective_message) is not None and data.refusals.allow(user.id):
            await message.reply_text(text)
    except Exception as err:  # whatever failed, the update stays stopped
        log.warning("could not send a refusal to user %s: %s", user.id, err)


async def start(update: Update, context: Context) -> None:
    """/start: greeting and what the bot can do (in a group: how to use it there)."""
    facts = await help_facts(update.effective_message, context)
    await update.effective_message.reply_text(replies.start_text(facts))


async def help_command(update: Update, context: Context) -> None:
    """/help: what the bot can do, with examples and the index's own #categories (in a
    group: how to use it there, where it answers only what names it)."""
    facts = await help_facts(update.effective_message, context)
    await update.effective_message.reply_text(replies.help_text(facts))


async def help_facts(message: Message, context: Context) -> replies.HelpFacts:
    """What /help and /start depend on: /ask on or off, the model, the index's categories,
    and whether they are asked in a group."""
    services = context.bot_data.services
    group_bot = context.bot.username if groups.is_in_group(message) else None
    return replies.HelpFacts(
        ask_enabled=services.ask_enabled,
        model=model_note(context, admin=False),
        categories=await services.categories(),
        group_bot=group_bot,
        library=library_texts.help_lines(group_bot) if services.library else (),
    )


def model_note(context: Context, *, admin: bool) -> replies.ModelNote:
    """The search model as a user may see it (a local model's path only for admins)."""
    encoder = context.bot_data.services.encoder
    name = encoder.model_name if admin else replies.public_model_name(encoder.model_name)
    return replies.ModelNote(name, encoder.family, encoder.multilingual)


async def stats(update: Update, context: Context) -> None:
    """/stats: pictures indexed and the model; the operator's details (device, dtype, how
    they were tuned, the store's address, a local model's path) only for ADMIN_USER_IDS:
    they tell where the data lives and mean nothing to a user."""
    s = await context.bot_data.services.stats()
    user = update.effective_user
    admin = user is not None and user.id in context.bot_data.admin_user_ids
    model = model_note(context, admin=admin)
    text = replies.stats_text(images=s.images, model=model)
    if admin:
        text = replies.stats_text(
            images=s.images,
            model=model,
            device=s.device,
            dtype=s.dtype,
            store=s.store,
            tuned=s.tuned,
        )
    message = update.effective_message
    await message.reply_text(text + await library.stats_of(message.chat_id, context))


async def unknown_command(update: Update, context: Context) -> None:
    """A command the bot does not have: one line pointing to /help (the whole help would
    bury the chat for a typo). In a group only a command addressed to this bot
    (`/foo@ThisBot`) gets here: the gatekeeper leaves bare ones to the bots they are for."""
    message = update.effective_message
    written = (message.text or "").split(maxsplit=1)[0]
    group_bot = context.bot.username if groups.is_in_group(message) else None
    await message.reply_text(replies.unknown_command(written.partition("@")[0], group_bot))


async def search_text(update: Update, context: Context) -> None:
    """Any text that is not a command: the best matching pictures, as an album with buttons
    under it. A reply to a photo is about that photo instead (`about_photo`)."""
    message = update.effective_message
    target = message.reply_to_message
    if target is not None and groups.has_picture(target):
        await about_photo(update, context, target)
        return
    query = clean_query(groups.without_mention(message, context.bot.username))
    data = context.bot_data
    async with chat_action(context.bot, message.chat_id):
        found = await data.services.search_text(query, chat_id=message.chat_id)
        await results.show_search(_chat_of(message, update), found, data)


async def search_photo(update: Update, context: Context) -> None:
    """A photo, or a picture sent as a file (its caption, if any, changes the search): the
    most similar pictures, as an album with buttons under it."""
    message = update.effective_message
    await _search_like(update, context, message, _words(message, context))


async def about_photo(update: Update, context: Context, target: Message) -> None:
    """Words replied to a photo (`target`, in the same chat): a question (`groups.is_question`:
    "what colour is it?") is answered about it; other words search for that photo changed
    by them, as its caption would ("at night"). In a group only questions to the bot's
    photos and replies that mention the bot get here (the gatekeeper drops the chatter)."""
    message = update.effective_message
    words = _words(message, context)
    if not groups.is_question(words):
        await _search_like(update, context, target, words)
    elif not context.bot_data.services.ask_enabled:
        await message.reply_text(replies.ASK_DISABLED)
    else:
        await ask_about(update, context, target, groups.question_of(words))


def _words(message: Message, context: Context) -> str:
    """The words of a message's text or caption, without the bot's @mention, spaces tidied."""
    return " ".join(groups.without_mention(message, context.bot.username).split())


async def _search_like(update: Update, context: Context, target: Message, words: str) -> None:
    """Search for the picture of `target`, changed by `words`; the results answer the
    message of `update`."""
    message = update.effective_message
    data = context.bot_data
    async with chat_action(context.bot, message.chat_id):
        picture = await download_picture(target, context)
        found = await data.services.search_photo(
            picture, words[:MAX_QUERY_CHARS], chat_id=message.chat_id, itself=_library_id(target)
        )
        await results.show_search(_chat_of(message, update), found, data)


def _library_id(message: Message) -> str | None:
    """The library id the picture of `message` has (or would have) in its chat's library."""
    try:
        return library_id(message.chat_id, groups.unique_id(message))
    except ValueError:
        return None


def _chat_of(message: Message, update: Update) -> results.Chat:
    """Results go to the message's chat; in a group they reply to it."""
    private = message.chat.type == ChatType.PRIVATE
    return results.Chat(
        message.get_bot(),
        message.chat_id,
        update.effective_user.id,
        reply_to=None if private else message.message_id,
    )


async def button(update: Update, context: Context) -> None:
    """A press on a button under an album: answered at once (with why, when it cannot be
    done), then done."""
    query = update.callback_query
    data = context.bot_data
    press = parse_press(query.data)
    found = await asyncio.to_thread(data.searches.get, press.token) if press else None
    chat_id = query.message.chat.id if query.message is not None else None
    problem = results.refusal(press, found, chat_id)
    if problem is None and found is not None and found.token in data.pressing:
        problem = replies.BUTTON_BUSY
    if problem is not None or press is None or found is None:
        log.info("button press of user %s refused: %s", query.from_user.id, problem)
        await query.answer(problem)
        return
    data.pressing.add(found.token)
    try:
        await query.answer()
        chat = results.Chat(context.bot, found.chat_id, query.from_user.id)
        await results.run_press(press, found, chat, data, query.message)
    finally:
        data.pressing.discard(found.token)


async def inline_query(update: Update, context: Context) -> None:
    """`@bot a red bus` in any chat: matching photos to pick from, page by page."""
    query = update.inline_query
    try:
        await inline.answer(query, context.bot_data)
    except SearchBotError as err:
        log_failure(update, err)
        await query.answer([], cache_time=0, is_personal=True)


async def ask(update: Update, context: Context) -> None:
    """/ask <question> replying to a photo (or as a photo's caption): BLIP-2 answers it;
    /ask alone describes the photo."""
    message = update.effective_message
    if not context.bot_data.services.ask_enabled:
        await message.reply_text(replies.ASK_DISABLED)
        return
    match = ASK.match(message.text or message.caption or "")
    question = " ".join((match.group(1) or "").split()) if match else ""
    target = message if groups.has_picture(message) else message.reply_to_message
    if target is None:
        await message.reply_text(replies.ASK_USAGE)
        return
    if not groups.has_picture(target):
        await message.reply_text(replies.ASK_NO_PHOTO)
        return
    await ask_about(update, context, target, question)


async def ask_about(update: Update, context: Context, target: Message, question: str) -> None:
    """BLIP-2's answer to `question` (a description when it is empty) about the picture of
    `target`, as a reply to the message of `update`: one waiting question per user."""
    message = update.effective_message
    services = context.bot_data.services
    if len(question) > replies.MAX_QUESTION_CHARS:
        await message.reply_text(replies.question_too_long(len(question)))
        return
    user_id = update.effective_user.id
    slot = services.ask_slots.claim(user_id)
    if slot != "ok":
        log.info("/ask of user %s refused: %s", user_id, slot)
        await message.reply_text(replies.ASK_PENDING if slot == "pending" else replies.ASK_BUSY)
        return
    try:
        answer = await _answer(message, target, question, context)
    finally:
        services.ask_slots.release(user_id)
    if answer is not None:
        await message.reply_text(
            replies.answer_text(answer, caption_mode=not question), do_quote=True
        )


async def _answer(message: Message, target: Message, question: str, context: Context) -> str | None:
    """Wait for BLIP-2's answer about the picture of `target` (downloaded only when it was not
    asked about recently); None when questions are unavailable, after telling the user once:
    at once while a failed load is not retried, else in place of the loading notice."""
    services = context.bot_data.services
    retry_in = services.ask_retry_in
    if retry_in is not None:
        log.info("/ask unavailable: BLIP-2 did not load, not tried again for %.0f s", retry_in)
        await message.reply_text(replies.ask_unavailable(retry_in))
        return None
    notice = None if services.vqa_ready else await message.reply_text(replies.ASK_FIRST_ANSWER)
    async with chat_action(context.bot, message.chat_id, ChatAction.TYPING):
        try:
            return await services.ask(
                groups.unique_id(target),
                lambda: download_picture(target, context),
                question or None,
            )
        except ModelUnavailable as err:
            log.error("cannot answer /ask: %s", err)
            text = replies.ask_unavailable(services.ask_retry_in)
    await _say_instead(message, notice, text)
    return None


async def _say_instead(message: Message, notice: Message | None, text: str) -> None:
    """Send `text` as the bot's one word on `message`: in place of `notice` when there is one
    (edited, so the chat does not keep a promise the bot could not keep), else a reply."""
    if notice is not None:
        try:
            await notice.edit_text(text)
            return
        except TelegramError as err:
            log.warning("could not edit the loading notice: %s", err)
    await message.reply_text(text)


async def not_a_picture_file(update: Update, context: Context) -> None:
    """A file that is not a picture."""
    await update.effective_message.reply_text(replies.NOT_AN_IMAGE_FILE)


async def unsupported(update: Update, context: Context) -> None:
    """Stickers, voice, video, locations, polls and the like: a short hint."""
    await update.effective_message.reply_text(replies.UNSUPPORTED)


async def download_picture(message: Message, context: Context) -> bytes:
    """The bytes of the largest size of the message's photo, or of its picture document.

    Raises `FileTooBig` over Telegram's 20 MB download limit.
    """
    if message.photo:
        item = message.photo[-1]
    elif message.document:
        item = message.document
    else:
        raise ValueError("message has no photo or document")
    if item.file_size and item.file_size > DOWNLOAD_LIMIT:
        raise FileTooBig(replies.FILE_TOO_BIG)
    try:
        file = await context.bot.get_file(item.file_id)
    except BadRequest as err:
        if "too big" in str(err).lower():
            raise FileTooBig(replies.FILE_TOO_BIG) from None
        raise
    return bytes(await file.download_as_bytearray())


async def on_error(update: object, context: Context) -> None:
    """Every failure ends here: domain errors get their clear reply, anything else is logged
    in full with the update and the user is told something went wrong."""
    err = context.error
    if isinstance(err, SearchBotError):
        log_failure(update, err)
        text = str(err) if isinstance(err, FileTooBig) else replies.error_reply(err)
    else:
        log.error("error while handling %s", describe_update(update), exc_info=err)
        log.debug("the update: %s", update)  # users' words and names: only at DEBUG
        text = replies.GENERIC_ERROR
    if not isinstance(update, Update):
        return
    message, chat = update.message, update.effective_chat
    if message is None and update.callback_query is not None:
        message = update.callback_query.message
    try:
        if isinstance(message, Message):
            await message.reply_text(text)
        elif chat is not None:
            await context.bot.send_message(chat.id, text)
    except TelegramError as reply_err:
        log.warning("could not tell the user about the error: %s", reply_err)


def log_failure(update: object, err: SearchBotError) -> None:
    """One INFO line for a request a domain error ended: the error's message when it is about
    the host, else only its kind (the message may repeat the user's words: DEBUG only)."""
    if not err.quotes_user:
        log.info("%s failed: %s", describe_update(update), err)
        return
    log.info("%s failed: %s", describe_update(update), type(err).__name__)
    log.debug("%s failed: %s", describe_update(update), err)


def describe_update(update: object) -> str:
    """An update for the logs by its ids and kind, without what the user wrote or their name:
    "update 100012 (message, text) chat 1005 user 1005 message 3"."""
    if not isinstance(update, Update):
        return f"update of type {type(update).__name__}"
    message, chat, user = update.effective_message, update.effective_chat, update.effective_user
    kind = next((k for k in update.to_dict() if k != "update_id"), "unknown")
    if message is not None:
        kind += f", {effective_message_type(message) or 'other'}"
    parts = [f"update {update.update_id} ({kind})"]
    if chat is not None:
        parts.append(f"chat {chat.id}")
    if user is not None:
        parts.append(f"user {user.id}")
    if message is not None:
        parts.append(f"message {message.message_id}")
    return " ".join(parts)


COMMANDS = {"start": start, "help": help_command, "stats": stats, "ask": ask}
"""The bot's commands and their handlers (`bot.app` wires them; in a group a bare command
is for this bot only when it is one of these)."""
COMMAND_NAMES = frozenset(COMMANDS)
