"""The chats' libraries in one Chroma collection, `<COLLECTION>-library` (embedded, or on
the Chroma server like the main collection), every call scoped to one chat.

Isolation: every read and removal filters by the chat's id in the store, and every record
read back is checked again here (the store is untrusted: a record of another chat, or a
malformed one, is never returned). Bounds: `LibraryLimits.max_per_chat` (the oldest go
first) and `retention_days` (older pictures are neither found nor kept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.config import Settings
from core.errors import IndexEmpty
from core.library.records import LibraryRecord, library_collection, library_id
from core.store.database import Database, Match, VectorStore

log = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass(frozen=True)
class LibraryLimits:
    max_per_chat: int = 10_000
    """LIBRARY_MAX_PER_CHAT: past it, the chat's oldest pictures are removed."""
    retention_days: int | None = None
    """LIBRARY_RETENTION_DAYS: older pictures are removed (None: kept until removed)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LibraryLimits:
        return cls(settings.library_max_per_chat, settings.library_retention_days)


@dataclass(frozen=True)
class Added:
    """What adding a picture did."""

    stored: bool
    """False when the chat's library already held it (same file_unique_id)."""
    removed_oldest: int = 0
    """The chat's oldest pictures removed to stay within the limit."""


@dataclass(frozen=True)
class LibraryTotals:
    chats: int
    pictures: int


class Library:
    """The libraries of every chat; each method works on one chat's pictures only."""

    def __init__(self, store: VectorStore[LibraryRecord], limits: LibraryLimits) -> None:
        self.store = store
        self.limits = limits

    @classmethod
    def open(cls, settings: Settings, *, model: str, dim: int) -> Library:
        """Open (creating it when missing) the libraries' collection for `model`; one made
        with another model raises `ModelMismatch`."""
        store = Database(settings).open(
            library_collection(settings), LibraryRecord, model=model, dim=dim, create=True
        )
        return cls(store, LibraryLimits.from_settings(settings))

    def add(self, record: LibraryRecord, vector: np.ndarray) -> Added:
        """Keep `record` with its vector unless the chat holds the picture already; then
        remove what the limits no longer allow in that chat."""
        if record.id != library_id(record.chat_id, record.file_unique_id) or not record.chat_id:
            raise ValueError(f"malformed library record {record.id!r}")
        if self.get(record.chat_id, record.file_unique_id) is not None:
            return Added(stored=False)
        self.store.upsert([record], np.asarray(vector, dtype=np.float32)[None, :])
        return Added(stored=True, removed_oldest=self._trim(record.chat_id))

    def get(self, chat_id: int, file_unique_id: str) -> LibraryRecord | None:
        """The chat's record of this picture, or None."""
        found = self.store.get([library_id(chat_id, file_unique_id)])
        return next((r for r in found if r.chat_id == chat_id and self._fresh(r)), None)

    def search(
        self,
        chat_id: int,
        vector: np.ndarray,
        n: int,
        *,
        floor: float | None = None,
        exclude: Sequence[str] = (),
    ) -> list[Match[LibraryRecord]]:
        """The chat's `n` pictures nearest `vector`, best first, scoring `floor` or more."""
        try:
            [found] = self.store.query(
                np.asarray(vector, dtype=np.float32)[None, :], n, where=self._scope(chat_id)
            )
        except IndexEmpty:
            return []
        left_out = set(exclude)
        return [
            m
            for m in found
            if m.record.chat_id == chat_id
            and self._fresh(m.record)
            and m.record.id not in left_out
            and (floor is None or m.score >= floor)
        ]

    def vector(self, chat_id: int, record_id: str) -> np.ndarray | None:
        """The stored vector of the chat's picture `record_id` (None: not the chat's)."""
        if not any(r.chat_id == chat_id for r in self.store.get([record_id])):
            return None
        return self.store.vectors([record_id]).get(record_id)

    def pictures(self, chat_id: int) -> list[LibraryRecord]:
        """Every picture of the chat's library (at most `max_per_chat` and a few)."""
        return [r for r in self.store.find(self._scope(chat_id)) if r.chat_id == chat_id]

    def count(self, chat_id: int) -> int:
        return len(self.pictures(chat_id))

    def forget(self, chat_id: int, record_ids: Sequence[str]) -> int:
        """Remove the chat's pictures among `record_ids`; how many were there."""
        mine = [r.id for r in self.store.get(list(record_ids)) if r.chat_id == chat_id]
        if mine:
            self.store.delete(mine)
        return len(mine)

    def clear(self, chat_id: int) -> int:
        """Remove every picture of the chat; how many there were."""
        ids = [r.id for r in self.store.find({"chat_id": chat_id}) if r.chat_id == chat_id]
        if ids:
            self.store.delete(ids)
        return len(ids)

    def expire(self) -> int:
        """Remove every chat's pictures older than the retention (none without one)."""
        cutoff = self._cutoff()
        if cutoff is None:
            return 0
        ids = [r.id for r in self.store.find({"date": {"$lt": cutoff}})]
        if ids:
            self.store.delete(ids)
            log.info("library: removed %d pictures older than the retention", len(ids))
        return len(ids)

    def totals(self) -> LibraryTotals:
        """Chats with a library and their pictures, for `python -m core status`."""
        chats: set[int] = set()
        pictures = 0
        for record in self.store:
            if record.chat_id:
                chats.add(record.chat_id)
                pictures += 1
        return LibraryTotals(len(chats), pictures)

    def _trim(self, chat_id: int) -> int:
        """Remove the chat's oldest pictures beyond `max_per_chat`."""
        pictures = self.pictures(chat_id)
        extra = len(pictures) - self.limits.max_per_chat
        if extra <= 0:
            return 0
        oldest = sorted(pictures, key=lambda r: (r.date, r.message_id))[:extra]
        self.store.delete([r.id for r in oldest])
        return len(oldest)

    def _scope(self, chat_id: int) -> dict:
        """The store filter for the chat's pictures still within the retention."""
        cutoff = self._cutoff()
        if cutoff is None:
            return {"chat_id": chat_id}
        return {"$and": [{"chat_id": chat_id}, {"date": {"$gte": cutoff}}]}

    def _fresh(self, record: LibraryRecord) -> bool:
        cutoff = self._cutoff()
        return cutoff is None or record.date >= cutoff

    def _cutoff(self) -> int | None:
        days = self.limits.retention_days
        return None if days is None else int(time.time()) - days * DAY_S


@dataclass(frozen=True)
class LibraryScope:
    """A search's reach into the libraries: the chat it runs in (its pictures only)."""

    library: Library
    chat_id: int
