"""Pictures posted in a chat with its library on (and `/save`d ones) wait here to be added:
one bounded queue and one worker, so a chat posting a hundred photos at once is embedded one
picture at a time between everyone's searches (a search waits for one picture at most,
docs/benchmarks.md), and a flood beyond `MAX_PENDING` is refused, never held without bound.

The picture is downloaded from Telegram into memory, embedded and dropped: its bytes never
reach the disk. What is kept is `core.library.records.LibraryRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from telegram import Bot

from bot.library_service import LibraryService
from core.errors import SearchBotError
from core.library.records import LibraryRecord
from core.library.store import Added

log = logging.getLogger(__name__)

MAX_PENDING = 1000
"""Pictures waiting to be added, in all chats together; more are refused."""


@dataclass(frozen=True)
class Posted:
    """A picture to add: its record, and which of its files to download for embedding (a
    photo's smallest size that still fills the model's input)."""

    record: LibraryRecord
    download_id: str


@dataclass
class _Job:
    posted: Posted
    result: asyncio.Future[Added] | None
    """Set for `/save` (someone waits for the answer); None for a captured post."""


class Ingest:
    """The queue of pictures to add and its worker (`start` once the bot runs)."""

    def __init__(self, library: LibraryService, max_pending: int = MAX_PENDING) -> None:
        self.library = library
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_pending)
        self._worker: asyncio.Task[None] | None = None
        self.added = 0
        """Pictures added since start-up (tests and logs read it)."""

    def start(self, bot: Bot) -> None:
        self._worker = asyncio.create_task(self._work(bot))

    def offer(self, posted: Posted) -> bool:
        """Queue a captured post; False when the queue is full (the post is not added)."""
        try:
            self._queue.put_nowait(_Job(posted, None))
        except asyncio.QueueFull:
            return False
        return True

    async def save(self, posted: Posted) -> Added:
        """Queue `posted` and wait until it is added (raises `QueueFull`, `BadImage`, ...)."""
        future: asyncio.Future[Added] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(posted, future))
        return await future

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Stop the worker; what still waits is logged (it was never stored)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue.qsize():
            log.warning("library: %d posted pictures were not added (shutdown)", self.pending)

    async def _work(self, bot: Bot) -> None:
        while True:
            job = await self._queue.get()
            try:
                added = await self._add(bot, job.posted)
            except Exception as err:  # one bad picture never stops the queue
                self._failed(job, err)
            else:
                if job.result is not None and not job.result.done():
                    job.result.set_result(added)
            finally:
                self._queue.task_done()

    async def _add(self, bot: Bot, posted: Posted) -> Added:
        record = posted.record
        if await self.library.has(record.chat_id, record.file_unique_id):
            return Added(stored=False)
        file = await bot.get_file(posted.download_id)
        data = bytes(await file.download_as_bytearray())
        added = await self.library.add(record, data)
        self.added += added.stored
        log.info(
            "library of chat %s: added message %s%s",
            record.chat_id,
            record.message_id,
            f", removed the {added.removed_oldest} oldest" if added.removed_oldest else "",
        )
        return added

    def _failed(self, job: _Job, err: Exception) -> None:
        record = job.posted.record
        if job.result is not None and not job.result.done():
            job.result.set_exception(err)
        level = logging.INFO if isinstance(err, SearchBotError) else logging.WARNING
        log.log(
            level,
            "library of chat %s: message %s not added: %s",
            record.chat_id,
            record.message_id,
            err,
        )
