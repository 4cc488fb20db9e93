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

from bot import handlers
from bot.file_ids import FileIdCache
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


def build_application(settings: Settings, services: Services) -> Application:
    """The bot: services, handlers and error handler wired together, ready to run."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")

    async def post_init(app: Application) -> None:
        data: BotData = app.bot_data
        data.services = services
        data.file_ids = FileIdCache(
            settings.chroma_path / f"{settings.collection}-telegram-file-ids.sqlite3", app.bot.id
        )
        data.searches = SearchContexts(
            settings.chroma_path / f"{settings.collection}-telegram-searches.sqlite3"
        )
        data.storage_chat_id = settings.storage_chat_id
        data.limiter = UserRateLimiter(settings.rate_limit_per_minute)
        data.allowed_user_ids = settings.allowed_user_ids
        data.admin_user_ids = settings.admin_user_ids
        await app.bot.set_my_commands(
            [*COMMANDS, ASK_COMMAND] if services.ask_enabled else COMMANDS
        )
        log.info("bot @%s is ready", app.bot.username)
        data.warming = asyncio.create_task(_warm_up_once_running(app, services))

    async def post_shutdown(app: Application) -> None:
        # Runs even when start-up stopped before post_init (a signal, a refused token).
        for name in ("file_ids", "searches"):
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
    _add_handlers(app, inline=settings.inline_enabled)
    return app


def _add_handlers(app: Application, *, inline: bool) -> None:
    """Every handler, in the order PTB tries them: the gatekeeper first (group -1), then
    buttons, inline queries (with `inline`), commands, texts (a reply to a photo is about
    that photo), pictures, other files, and anything else; failures go to the error
    handler."""
    app.add_handler(TypeHandler(Update, handlers.gatekeeper), group=-1)
    app.add_handler(CallbackQueryHandler(handlers.button))
    if inline:
        app.add_handler(InlineQueryHandler(handlers.inline_query))
    for name, callback in handlers.COMMANDS.items():
        app.add_handler(CommandHandler(name, callback))
    app.add_handler(MessageHandler(filters.COMMAND, handlers.unknown_command))
    app.add_handler(MessageHandler(filters.TEXT, handlers.search_text))
    pictures = filters.PHOTO | filters.Document.IMAGE
    app.add_handler(MessageHandler(pictures & filters.CaptionRegex(handlers.ASK), handlers.ask))
    app.add_handler(MessageHandler(pictures, handlers.search_photo))
    app.add_handler(MessageHandler(filters.Document.ALL, handlers.not_a_picture_file))
    app.add_handler(MessageHandler(filters.ALL, handlers.unsupported))
    app.add_error_handler(handlers.on_error)
