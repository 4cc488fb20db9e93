"""All the wiring of the Telegram application in one place: `build_application()`."""

from __future__ import annotations

import asyncio
import logging

from telegram import BotCommand, Update
from telegram.constants import ParseMode
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    Defaults,
    InlineQueryHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import handlers, library
from bot.file_ids import FileIdCache
from bot.library_chats import LibraryChats
from bot.library_ingest import Ingest
from bot.limits import RetryingRateLimiter, UserRateLimiter
from bot.saved_searches import SearchContexts
from bot.services import Services
from bot.state import BotData
from core.config import Settings

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("help", "what I can do, with examples"),
    BotCommand("stats", "how many pictures are indexed, and with which model"),
]
ASK_COMMAND = BotCommand("ask", "reply to a photo: answer a question about it, or describe it")
LIBRARY_COMMANDS = [
    BotCommand("library", "this chat's own library of posted photos: on, off, clear"),
    BotCommand("save", "reply to a photo: add it to this chat's library"),
    BotCommand("forget", "reply to a photo: remove it from this chat's library"),
]
CONCURRENT_UPDATES = 64
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.INLINE_QUERY]
"""What the bot asks Telegram for: messages, button presses and inline queries."""


async def _warm_up_once_running(app: Application, services: Services) -> None:
    """Load the search index as soon as the bot polls Telegram (or listens for its webhook):
    a large embedded index takes seconds to load (docs/benchmarks.md). Start-up does not
    wait for it; a search that comes meanwhile does, later ones find it loaded."""
    while not app.running:
        await asyncio.sleep(0.1)
    await services.warm_up()


def _fill(data: BotData, settings: Settings, services: Services, bot_id: int) -> None:
    """The bot's shared state: services, the local SQLite files next to the index, limits."""
    data.services = services
    folder, name = settings.chroma_path, settings.collection
    data.file_ids = FileIdCache(folder / f"{name}-telegram-file-ids.sqlite3", bot_id)
    data.searches = SearchContexts(folder / f"{name}-telegram-searches.sqlite3")
    data.library_chats = LibraryChats(folder / f"{name}-library-chats.sqlite3")
    if services.library is not None and services.library.available:
        data.ingest = Ingest(services.library)
    data.storage_chat_id = settings.storage_chat_id
    data.limiter = UserRateLimiter(settings.rate_limit_per_minute)
    data.allowed_user_ids = settings.allowed_user_ids
    data.admin_user_ids = settings.admin_user_ids


def _commands(services: Services) -> list[BotCommand]:
    """The command menu: /ask only when questions are served, the library's with it on."""
    commands = [*COMMANDS, ASK_COMMAND] if services.ask_enabled else list(COMMANDS)
    return commands + LIBRARY_COMMANDS if services.library is not None else commands


def build_application(settings: Settings, services: Services) -> Application:
    """The bot: services, handlers and error handler wired together, ready to run."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")

    async def post_init(app: Application) -> None:
        data: BotData = app.bot_data
        _fill(data, settings, services, app.bot.id)
        if data.ingest is not None:
            data.ingest.start(app.bot)
        await app.bot.set_my_commands(_commands(services))
        log.info("bot @%s is ready", app.bot.username)
        data.warming = asyncio.create_task(_warm_up_once_running(app, services))

    async def post_shutdown(app: Application) -> None:
        # Runs even when start-up stopped before post_init (a signal, a refused token).
        ingest = vars(app.bot_data).get("ingest")
        if ingest is not None:
            await ingest.close()
        for name in ("file_ids", "searches", "library_chats"):
            store = vars(app.bot_data).get(name)
            if store is not None:
                store.close()
        services.close()

    app = (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.telegram_base_file_url)
        .defaults(Defaults(parse_mode=ParseMode.HTML))
        .context_types(ContextTypes(bot_data=BotData))
        .concurrent_updates(CONCURRENT_UPDATES)
        .rate_limiter(RetryingRateLimiter())
        .connect_timeout(10)
        .read_timeout(30)
        .write_timeout(30)
        .media_write_timeout(60)
        .post_init(post_init)
        .post_shutdown(post_shutdown)
        .build()
    )
    _add_handlers(app, inline=settings.inline_enabled, library_on=settings.library_enabled)
    return app


def _add_handlers(app: Application, *, inline: bool, library_on: bool) -> None:
    """Every handler, in the order PTB tries them: the gatekeeper first (group -1), then
    buttons, inline queries (with `inline`), commands, texts (a reply to a photo is about
    that photo), pictures, other files, and anything else; failures go to the error
    handler."""
    app.add_handler(TypeHandler(Update, handlers.gatekeeper), group=-1)
    if library_on:
        app.add_handler(CallbackQueryHandler(library.clear_button, pattern=library.CLEAR_PATTERN))
    app.add_handler(CallbackQueryHandler(handlers.button))
    if inline:
        app.add_handler(InlineQueryHandler(handlers.inline_query))
    for name, callback in handlers.COMMANDS.items():
        app.add_handler(CommandHandler(name, callback))
    if library_on:
        app.add_handler(CommandHandler("library", library.library_command))
        app.add_handler(CommandHandler("save", library.save))
        app.add_handler(CommandHandler("forget", library.forget))
    app.add_handler(MessageHandler(filters.COMMAND, handlers.unknown_command))
    app.add_handler(MessageHandler(filters.TEXT, handlers.search_text))
    pictures = filters.PHOTO | filters.Document.IMAGE
    app.add_handler(MessageHandler(pictures & filters.CaptionRegex(handlers.ASK), handlers.ask))
    app.add_handler(MessageHandler(pictures, handlers.search_photo))
    app.add_handler(MessageHandler(filters.Document.ALL, handlers.not_a_picture_file))
    app.add_handler(MessageHandler(filters.ALL, handlers.unsupported))
    app.add_error_handler(handlers.on_error)
