"""The chats' libraries as the bot uses them: async, models and the store in worker threads.

Who uses it: `Services` opens it at start-up with LIBRARY_ENABLED (`open`); the ingest queue
(`bot.library_ingest`) adds pictures through it, the /library, /save and /forget handlers
count and remove, and searches in a chat reach its library through `scope`.

A library made with another model than CLIP_MODEL is refused, as the main index is: the
bot then runs without libraries and says why (`problem`) to whoever asks for one.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

from core.config import Settings
from core.errors import ModelMismatch, StoreUnavailable
from core.images import load_image
from core.library.records import LibraryRecord, library_collection
from core.library.store import Added, Library, LibraryScope, LibraryTotals
from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

MISMATCH = (
    "This bot's chat libraries were made with another search model, so they are off until "
    "its operator removes them."
)
MISMATCH_LOG = (
    "chat libraries are off: %s: remove them with `python -m core drop-libraries --yes` "
    "(every chat's library), or go back to the model they were made with"
)
UNREACHABLE = "Chat libraries are unavailable right now (the store cannot be reached)."


class LibraryService:
    """Adds, finds and removes a chat's library pictures (`core.library.store.Library`)."""

    def __init__(
        self, settings: Settings, encoder: DualEncoder, decodes: threading.BoundedSemaphore
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self._decodes = decodes
        self._library: Library | None = None
        self.problem: str | None = None
        """Why libraries are unavailable (said to users), or None."""

    def open(self) -> None:
        """Open (or create) `<COLLECTION>-library`; a failure is logged and kept in
        `problem`, and the bot runs without libraries."""
        try:
            self._library = Library.open(
                self.settings, model=self.settings.clip_model, dim=self.encoder.dim
            )
            self._library.expire()
        except ModelMismatch as err:
            log.error(MISMATCH_LOG, err)
            self.problem = MISMATCH
        except StoreUnavailable as err:
            log.error("chat libraries are off: %s", err)
            self.problem = UNREACHABLE
        else:
            log.info("chat libraries on, in collection %r", library_collection(self.settings))

    @property
    def available(self) -> bool:
        return self._library is not None

    def scope(self, chat_id: int | None) -> LibraryScope | None:
        """What a search in `chat_id` may find of the libraries (None: nothing)."""
        if self._library is None or chat_id is None:
            return None
        return LibraryScope(self._library, chat_id)

    async def add(self, record: LibraryRecord, data: bytes) -> Added:
        """Decode and embed the picture in `data` (raises `BadImage`), then keep it."""

        def add() -> Added:
            with self._decodes:
                image = load_image(
                    data,
                    min_side=self.encoder.input_size,
                    max_pixels=self.settings.max_image_pixels,
                )
            vector = self.encoder.embed_images([image])[0]
            return self._store().add(record, vector)

        return await asyncio.to_thread(add)

    async def has(self, chat_id: int, file_unique_id: str) -> bool:
        found = await asyncio.to_thread(self._store().get, chat_id, file_unique_id)
        return found is not None

    async def record(self, chat_id: int, record_id: str) -> LibraryRecord | None:
        """The chat's picture `record_id`, or None."""
        unique = record_id.partition(":")[2]
        found = await asyncio.to_thread(self._store().get, chat_id, unique)
        return found if found is not None and found.id == record_id else None

    async def vector(self, chat_id: int, record_id: str) -> np.ndarray | None:
        return await asyncio.to_thread(self._store().vector, chat_id, record_id)

    async def count(self, chat_id: int) -> int:
        return await asyncio.to_thread(self._store().count, chat_id)

    async def forget(self, chat_id: int, record_ids: list[str]) -> int:
        return await asyncio.to_thread(self._store().forget, chat_id, record_ids)

    async def clear(self, chat_id: int) -> int:
        return await asyncio.to_thread(self._store().clear, chat_id)

    async def totals(self) -> LibraryTotals:
        return await asyncio.to_thread(self._store().totals)

    def _store(self) -> Library:
        assert self._library is not None, "libraries are unavailable (see `problem`)"
        return self._library
