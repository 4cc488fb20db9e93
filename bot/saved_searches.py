"""Search contexts behind the buttons under each album (More, Similar i, Full size, Show the
nearest anyway).

Telegram's callback_data holds at most 64 bytes, so a button carries only a short random
token (and small numbers); what it stands for (the prepared query, how far the search was
paged, the pictures of each album sent) stays here, in SQLite next to the file_id cache, so
a restart does not break yesterday's buttons. The store is bounded: at most `max_contexts`
searches, the least recently used forgotten first, and none unused for longer than `ttl_s`.
Each user has a share of it, `max_per_user` searches (their own least recently used go
first), so that one user searching in a loop cannot push everyone else's buttons out.

Callback data comes from users' clients and is untrusted: `parse_press` accepts only the
exact shapes `Press.data()` writes, and anything else is None.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from bot.local_db import open_local_db
from core.search.service import Hit, PreparedQuery

TOKEN_CHARS = 10
"""token_urlsafe(8) gives 11 characters; 10 of them carry 60 random bits."""
MAX_CONTEXTS = 10_000
MAX_PER_USER = 500
"""One user's share of `MAX_CONTEXTS`: a week of heavy use, a twentieth of the store."""
TTL_S = 7 * 24 * 3600.0
MAX_ALBUMS = 20
"""Albums of one search whose Similar / Full size buttons keep working (the latest ones)."""
MAX_LIKES = 4
"""Ranks a Similar search remembers of the presses that led to it (the latest ones)."""
CALLBACK_DATA_LIMIT = 64
"""Telegram's limit for callback_data, in bytes."""

Action = Literal["more", "similar", "full", "nearest", "jump"]
_CODES: dict[Action, str] = {
    "more": "m",
    "similar": "s",
    "full": "f",
    "nearest": "n",
    "jump": "j",
}
_TOKEN = rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}"
_NUMBER = r"(0|[1-9][0-9]{0,5})"
_PATTERNS: dict[Action, re.Pattern[str]] = {
    "more": re.compile(rf"m:({_TOKEN})"),
    "nearest": re.compile(rf"n:({_TOKEN})"),
    "full": re.compile(rf"f:({_TOKEN}):{_NUMBER}"),
    "similar": re.compile(rf"s:({_TOKEN}):{_NUMBER}:([1-9]|10)"),
    "jump": re.compile(rf"j:({_TOKEN}):{_NUMBER}:([1-9]|10)"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS searches (
    token TEXT PRIMARY KEY,
    used REAL NOT NULL,
    chat_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    body TEXT NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS searches_by_use ON searches (used)"
_USER_INDEX = "CREATE INDEX IF NOT EXISTS searches_by_user ON searches (user_id, used)"
_BEYOND = (
    "DELETE FROM searches WHERE token IN (SELECT token FROM searches{where}"
    " ORDER BY used DESC, rowid DESC LIMIT -1 OFFSET ?)"
)
"""Forget the searches past the first N most recently used (of one user, with `where`)."""


@dataclass(frozen=True)
class Press:
    """A button press: what to do, for which search, on which album (Similar: which hit,
    1-based)."""

    action: Action
    token: str
    album: int = 0
    index: int = 0

    def data(self) -> str:
        """The callback_data of this button ("m:<token>", "s:<token>:<album>:<i>", ...)."""
        parts = [_CODES[self.action], self.token]
        if self.action in ("full", "similar", "jump"):
            parts.append(str(self.album))
        if self.action in ("similar", "jump"):
            parts.append(str(self.index))
        data = ":".join(parts)
        if len(data.encode()) > CALLBACK_DATA_LIMIT or parse_press(data) != self:
            raise ValueError(f"not a valid button: {self!r}")
        return data


def parse_press(data: object) -> Press | None:
    """The press that `data` (a button's callback_data, as a client sent it) stands for, or
    None when it is not exactly one this bot writes (forged, garbled, another bot's)."""
    if not isinstance(data, str) or len(data) > CALLBACK_DATA_LIMIT:
        return None
    for action, pattern in _PATTERNS.items():
        match = pattern.fullmatch(data)
        if match:
            numbers = [int(group) for group in match.groups()[1:]]
            return Press(action, match.group(1), *numbers)
    return None


def _shown(id: object, path: object, message_id: object = 0) -> Shown:
    """A saved album's picture: [id, path] (older rows) or [id, path, message_id]."""
    return Shown(str(id), str(path), int(message_id))  # type: ignore[call-overload]


def new_token() -> str:
    """A fresh random token of `TOKEN_CHARS` url-safe characters."""
    return secrets.token_urlsafe(8)[:TOKEN_CHARS]


@dataclass(frozen=True)
class Shown:
    """A picture of an album sent: enough to search like it or to send its file."""

    id: str
    path: str
    message_id: int = 0
    """A chat library's picture: the message that posted it (0 for an indexed picture)."""

    @classmethod
    def of(cls, hit: Hit) -> Shown:
        return cls(hit.id, hit.path, hit.library.message_id if hit.library else 0)


@dataclass(frozen=True)
class Album:
    """An album sent for a search: its number in the search, the rank of its first picture
    and its pictures in order."""

    number: int
    first_rank: int
    pictures: tuple[Shown, ...]


@dataclass(frozen=True)
class SearchContext:
    """A search as its buttons need it."""

    query: str
    """`PreparedQuery.to_json()`."""
    chat_id: int
    user_id: int
    k: int
    """Results per page."""
    offset: int = 0
    """Results before the last page sent."""
    more: bool = False
    """Whether a page follows the last one sent."""
    nearest_anyway: bool = False
    """MIN_SCORE is ignored (the user asked for the nearest anyway)."""
    albums: tuple[Album, ...] = ()
    """The latest `MAX_ALBUMS` albums sent."""
    likes: tuple[int, ...] = ()
    """A Similar search: the ranks of the pictures pressed to get here, the latest first (at
    most `MAX_LIKES`); its query's reading is then the first search's, so the chat can say
    "like #2 of a red circle"."""
    token: str = field(default_factory=new_token)

    @property
    def prepared(self) -> PreparedQuery:
        return PreparedQuery.from_json(self.query)

    @property
    def next_album(self) -> int:
        return self.albums[-1].number + 1 if self.albums else 0

    def album(self, number: int) -> Album | None:
        return next((album for album in self.albums if album.number == number), None)

    def with_album(self, album: Album) -> SearchContext:
        return replace(self, albums=(*self.albums, album)[-MAX_ALBUMS:])

    def body(self) -> str:
        return json.dumps(
            {
                "query": json.loads(self.query),
                "k": self.k,
                "offset": self.offset,
                "more": self.more,
                "nearest_anyway": self.nearest_anyway,
                "likes": list(self.likes),
                "albums": [
                    [a.number, a.first_rank, [[p.id, p.path, p.message_id] for p in a.pictures]]
                    for a in self.albums
                ],
            }
        )

    @classmethod
    def from_row(cls, token: str, chat_id: int, user_id: int, body: str) -> SearchContext:
        data = json.loads(body)
        albums = tuple(
            Album(int(n), int(rank), tuple(_shown(*picture) for picture in pictures))
            for n, rank, pictures in data["albums"]
        )
        return cls(
            query=json.dumps(data["query"]),
            chat_id=chat_id,
            user_id=user_id,
            k=int(data["k"]),
            offset=int(data["offset"]),
            more=bool(data["more"]),
            nearest_anyway=bool(data["nearest_anyway"]),
            albums=albums,
            likes=tuple(int(rank) for rank in data.get("likes", ()))[:MAX_LIKES],
            token=token,
        )


class SearchContexts:
    """token → `SearchContext`, in SQLite; bounded (LRU, overall and per user) and expiring
    (TTL since last use). Thread-safe; call it from worker threads."""

    def __init__(
        self,
        path: Path,
        *,
        max_contexts: int = MAX_CONTEXTS,
        max_per_user: int = MAX_PER_USER,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_contexts = max_contexts
        self.max_per_user = max_per_user
        self.ttl_s = ttl_s
        self._clock = clock
        self._db = open_local_db(path, _SCHEMA, _INDEX, _USER_INDEX)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM searches").fetchone()[0]

    def get(self, token: str) -> SearchContext | None:
        """The search behind `token`, or None when it is unknown or expired (a hit counts as
        a use: it moves to the front of the LRU)."""
        now = self._clock()
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT chat_id, user_id, body, used FROM searches WHERE token = ?", (token,)
            ).fetchone()
            if row is None:
                return None
            if now - row[3] > self.ttl_s:
                self._db.execute("DELETE FROM searches WHERE token = ?", (token,))
                return None
            self._db.execute("UPDATE searches SET used = ? WHERE token = ?", (now, token))
        try:
            return SearchContext.from_row(token, row[0], row[1], row[2])
        except (ValueError, KeyError, TypeError):
            return None  # a row this version cannot read: as good as expired

    def put(self, context: SearchContext) -> None:
        """Store (or replace) `context`; forget expired ones, then the least recently used of
        its user's beyond `max_per_user` and of all beyond `max_contexts`."""
        now = self._clock()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO searches (token, used, chat_id, user_id, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (context.token, now, context.chat_id, context.user_id, context.body()),
            )
            self._db.execute("DELETE FROM searches WHERE used < ?", (now - self.ttl_s,))
            self._db.execute(
                _BEYOND.format(where=" WHERE user_id = ?"), (context.user_id, self.max_per_user)
            )
            self._db.execute(_BEYOND.format(where=""), (self.max_contexts,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
