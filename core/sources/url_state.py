"""What each URL of a list came to, on disk: SQLite beside the list's pictures.

For core.url_downloads. A Conceptual Captions list holds 3.3 million URLs: their bookkeeping
lives in this file, not in memory, so a download runs in bounded memory whatever the list's
length, and a rerun (a fresh process) knows what is done.

- `urls`: one row per URL met: its file once downloaded (and written to the manifest), its
  last failure and whether that one is permanent (remembered: not fetched again unless asked),
  its list line, and the last run that met it (a URL met twice in one run is a duplicate).
- `files`: the pictures in the folder when the run started (a picture written just before a
  killed run recorded it still counts).
- Written by one run at a time (the folder's lock), from one thread, committed in batches: a
  killed run loses at most the last batch of bookkeeping, never a picture.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import DownloadError

COMMIT_EVERY = 1000
"""Writes between commits."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    hash TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    line INTEGER NOT NULL,
    run INTEGER NOT NULL,
    file TEXT,
    failure TEXT,
    permanent INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (stem TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (run INTEGER PRIMARY KEY);
"""


@dataclass(frozen=True)
class UrlRow:
    """What a URL came to before this run met it."""

    file: str | None
    failure: str | None
    permanent: bool
    run: int


class UrlState:
    """The state of one list's downloads; `run` numbers this run."""

    def __init__(self, path: Path) -> None:
        """Raises `DownloadError` when the file cannot be opened or is not a state file."""
        try:
            self.db = sqlite3.connect(path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.run = self.db.execute("INSERT INTO runs DEFAULT VALUES").lastrowid or 0
            self.db.commit()
        except sqlite3.Error as err:
            raise DownloadError(f"cannot use the download state {path}: {err}") from None
        self.writes = 0

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def list_files(self, files: Iterable[tuple[str, str]]) -> None:
        """The pictures in the folder now: (stem, file name) pairs."""
        self.db.execute("DELETE FROM files")
        self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", files)
        self.db.commit()

    def forget_files(self) -> None:
        """The manifest was lost: every picture is to be recorded again."""
        self.db.execute("UPDATE urls SET file = NULL WHERE file IS NOT NULL")
        self.db.commit()

    def meet(self, key: str, url: str, line: int) -> UrlRow | None:
        """Note that this run met the URL (a transient failure of an earlier run is
        forgotten); what it came to before, or None for a new one. Met twice in one run, the
        second answer has `run` equal to this run."""
        found = self.db.execute(
            "SELECT file, failure, permanent, run FROM urls WHERE hash = ?", (key,)
        ).fetchone()
        previous = UrlRow(found[0], found[1], bool(found[2]), found[3]) if found else None
        if previous is None or previous.run != self.run:
            self._write(
                "INSERT INTO urls (hash, url, line, run) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (hash) DO UPDATE SET line = excluded.line, run = excluded.run, "
                "failure = CASE WHEN permanent THEN failure END",
                (key, url, line, self.run),
            )
        return previous

    def file_on_disk(self, key: str) -> str | None:
        """The name of the URL's picture when it was in the folder at the start of the run."""
        found = self.db.execute("SELECT name FROM files WHERE stem = ?", (key,)).fetchone()
        return found[0] if found else None

    def done(self, key: str, file: str) -> None:
        """The URL's picture is `file`, and the manifest says so."""
        self._write(
            "UPDATE urls SET file = ?, failure = NULL, permanent = 0 WHERE hash = ?", (file, key)
        )

    def failed(self, key: str, reason: str, permanent: bool) -> None:
        self._write(
            "UPDATE urls SET file = NULL, failure = ?, permanent = ? WHERE hash = ?",
            (reason, int(permanent), key),
        )

    def failures(self) -> Iterator[tuple[str, str]]:
        """(url, reason) in list order: the permanent failures remembered and this run's
        others (read in pages, never all at once)."""
        self.db.commit()
        yield from self.db.execute(
            "SELECT url, failure FROM urls WHERE failure IS NOT NULL "
            "AND (permanent OR run = ?) ORDER BY line",
            (self.run,),
        )

    def _write(self, sql: str, parameters: tuple[object, ...]) -> None:
        self.db.execute(sql, parameters)
        self.writes += 1
        if self.writes % COMMIT_EVERY == 0:
            self.db.commit()
