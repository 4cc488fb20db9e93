"""The bot's shared state: PTB's bot_data, typed, that every handler reads (services,
caches, limiters). Filled in `bot.app.build_application`'s post_init."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from telegram.ext import CallbackContext, ExtBot

from bot.file_ids import FileIdCache
from bot.library_chats import Clears, LibraryChats, PosterNames
from bot.library_ingest import Ingest
from bot.limits import OncePerWindow, UserRateLimiter
from bot.saved_searches import SearchContexts
from bot.services import Services


@dataclass
class BotData:
    """The application's shared state (PTB's bot_data), typed. Filled in post_init."""

    services: Services = field(init=False)
    file_ids: FileIdCache = field(init=False)
    limiter: UserRateLimiter = field(init=False)
    allowed_user_ids: frozenset[int] = frozenset()
    admin_user_ids: frozenset[int] = frozenset()
    refusals: OncePerWindow = field(default_factory=OncePerWindow)
    searches: SearchContexts = field(init=False)
    pressing: set[str] = field(default_factory=set)
    """Tokens whose press is being worked on (a second press waits for the first)."""
    storage_chat_id: int | None = None
    """Where inline mode uploads pictures once to get their file_ids (STORAGE_CHAT_ID)."""
    inline_storage_warned: bool = False
    warming: asyncio.Task | None = None
    """Loading the search index once the bot runs (kept: a task nobody holds may vanish)."""
    library_chats: LibraryChats = field(init=False)
    """Which chats add their posted pictures to their library (with LIBRARY_ENABLED)."""
    ingest: Ingest | None = None
    """The queue of pictures to add to libraries; None without LIBRARY_ENABLED."""
    behind: OncePerWindow = field(default_factory=OncePerWindow)
    """Chats told that their library's queue was full (once a window each)."""
    clears: Clears = field(default_factory=Clears)
    """`/library clear`s waiting for their confirmation."""
    posters: PosterNames = field(default_factory=PosterNames)
    """Names of who posted library pictures, for captions (in memory, for an hour)."""


Context = CallbackContext[ExtBot, dict, dict, BotData]
