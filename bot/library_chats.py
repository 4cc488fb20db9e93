"""Which chats keep a library (`/library on`): a small SQLite file next to the index, so a
restart keeps each chat's choice; read for every picture posted, so kept in memory too."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from telegram import Bot
from telegram.error import TelegramError

from bot.local_db import open_local_db

MAX_POSTERS = 5000
POSTER_TTL_S = 3600.0
MAX_CLEARS = 1000
CLEAR_TTL_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS library_chats (
    chat_id INTEGER PRIMARY KEY,
    enabled INTEGER NOT NULL,
    changed REAL NOT NULL,
    changed_by INTEGER NOT NULL
)
"""


class LibraryChats:
    """Each chat's library switch (off until someone allowed turns it on)."""

    def __init__(self, path: Path) -> None:
        self._db = open_local_db(path, _SCHEMA)
        self._lock = threading.Lock()
        with self._lock:
            rows = self._db.execute("SELECT chat_id FROM library_chats WHERE enabled = 1")
            self._enabled = {int(chat_id) for (chat_id,) in rows}

    def enabled(self, chat_id: int) -> bool:
        """Whether pictures posted in the chat are added to its library (no disk read)."""
        return chat_id in self._enabled

    def switch(self, chat_id: int, on: bool, by: int) -> bool:
        """Turn the chat's library on or off; False when it already was so."""
        with self._lock, self._db:
            if (chat_id in self._enabled) == on:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO library_chats VALUES (?, ?, ?, ?)",
                (chat_id, int(on), time.time(), by),
            )
            if on:
                self._enabled.add(chat_id)
            else:
                self._enabled.discard(chat_id)
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class PendingClear:
    """A `/library clear` waiting for its confirmation button."""

    chat_id: int
    asked: float


class Clears:
    """The clears waiting for a press: bounded, and each valid for `CLEAR_TTL_S`."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, PendingClear] = OrderedDict()

    def ask(self, chat_id: int) -> str:
        nonce = secrets.token_urlsafe(9)
        self._pending[nonce] = PendingClear(chat_id, time.monotonic())
        while len(self._pending) > MAX_CLEARS:
            self._pending.popitem(last=False)
        return nonce

    def take(self, nonce: str, chat_id: int) -> bool:
        """Whether `nonce` is a live clear of `chat_id` (it is used up)."""
        pending = self._pending.get(nonce)
        if pending is None or pending.chat_id != chat_id:
            return False
        del self._pending[nonce]
        return time.monotonic() - pending.asked <= CLEAR_TTL_S


class PosterNames:
    """Who posted a group's library pictures, by name, for their captions: asked of Telegram
    (getChatMember) and kept in memory only, bounded and for an hour. Names are never
    stored on disk."""

    def __init__(self) -> None:
        self._names: OrderedDict[tuple[int, int], tuple[str, float]] = OrderedDict()

    async def of(self, bot: Bot, chat_id: int, sender_ids: set[int]) -> dict[int, str]:
        """sender id → name, for those Telegram names (the others are left out)."""
        names = {}
        now = time.monotonic()
        for sender in sender_ids:
            known = self._names.get((chat_id, sender))
            if known is None or now - known[1] > POSTER_TTL_S:
                try:
                    member = await bot.get_chat_member(chat_id, sender)
                except TelegramError:
                    continue
                known = (member.user.full_name, now)
                self._names[(chat_id, sender)] = known
                while len(self._names) > MAX_POSTERS:
                    self._names.popitem(last=False)
            names[sender] = known[0]
        return names
