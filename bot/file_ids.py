"""Telegram file_ids of the pictures the bot has uploaded, persisted next to the index.

Once Telegram has a picture, sending it again by file_id costs no upload. file_ids are
valid for one bot only, so entries are keyed by the bot's id too. A picture is keyed by the
record's id and the very file its path led to (real path, device, inode, size, mtime: see
`picture_key`), so a file swapped under a record is uploaded afresh, through every check,
instead of hiding behind the file_id of the picture that was there before. SQLite keeps each write
durable and lets several bot processes on one host share the file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from bot.local_db import open_local_db
from core.search.sendable_files import FileIdentity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_ids (
    bot_id INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    PRIMARY KEY (bot_id, image_id)
)
"""


def picture_key(image_id: str, identity: FileIdentity) -> str:
    """The cache key of the picture of record `image_id` whose file is `identity`."""
    return f"{image_id}\0{identity.key}"


class FileIdCache:
    """picture key → Telegram file_id for one bot. Thread-safe; call it from worker threads."""

    def __init__(self, path: Path, bot_id: int) -> None:
        self.bot_id = bot_id
        self._db = open_local_db(path, _SCHEMA)
        self._lock = threading.Lock()

    def get_many(self, image_ids: Iterable[str]) -> dict[str, str]:
        ids = list(image_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                "SELECT image_id, file_id FROM file_ids"
                f" WHERE bot_id = ? AND image_id IN ({marks})",
                [self.bot_id, *ids],
            ).fetchall()
        return dict(rows)

    def put_many(self, pairs: dict[str, str]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO file_ids (bot_id, image_id, file_id) VALUES (?, ?, ?)",
                [(self.bot_id, image_id, file_id) for image_id, file_id in pairs.items()],
            )

    def forget(self, image_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "DELETE FROM file_ids WHERE bot_id = ? AND image_id = ?",
                [(self.bot_id, image_id) for image_id in image_ids],
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
