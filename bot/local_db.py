"""The bot's small SQLite files next to the index (Telegram file_ids, button searches): one
way to open them, safe to share between threads and between bot processes on one host."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_local_db(path: Path, *schema: str) -> sqlite3.Connection:
    """Open (creating it and its folder when missing) the SQLite file at `path` in WAL mode
    and run the `schema` statements. Guard every use with a lock of your own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=10)
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in schema:
            db.execute(statement)
    return db
