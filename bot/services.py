"""The core services as the bot uses them: async, and never running a model on the event loop.

Who uses it: `bot.__main__` starts them (`Services.start`), `bot.app` keeps them in bot_data
and closes them at shutdown, the handlers call them.

Text searches go through a micro-batcher (concurrent queries share one encoder call);
image searches run in worker threads. When the index is missing or the store unreachable
at start-up the bot still starts: each request then retries opening it, so an operator can
build the index while the bot runs. When the collection is dropped or replaced under the
running bot (`index_builder.py --rebuild` on a Chroma server), it is opened again; while it
is missing or empty, users are told the index is being rebuilt.

Start-up does not grow with the collection: it counts the records without loading the
collection's index; the bot loads it (`warm_up`) once it is running.

Memory: at most `decode_slots` pictures from users are decoded at once (each may cost a
full-size buffer of MAX_IMAGE_PIXELS × 4 bytes before it is reduced).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from bot.ask import AskService
from bot.batching import MicroBatcher
from bot.library_service import LibraryService
from bot.limits import AskSlots
from core.config import Settings
from core.errors import (
    IndexEmpty,
    IndexGone,
    IndexRebuilding,
    SearchBotError,
    StoreUnavailable,
    UnknownPicture,
)
from core.images import check_picture
from core.library.records import is_library_id
from core.models.encoder import DualEncoder
from core.models.vqa import VqaModel
from core.search.sendable_files import SendableFiles
from core.search.service import PreparedQuery, Query, SearchPage, SearchService

log = logging.getLogger(__name__)

MAX_TEXT_BATCH = 8
"""Concurrent texts embedded in one encoder call at most: small batches keep albums flowing
out under a burst, large ones make everyone wait for the whole batch (bench/bot_load.py,
docs/benchmarks.md)."""
DECODE_MEMORY_BUDGET = 512 * 1024 * 1024
"""Bytes the bot may spend at once on full-size buffers of pictures users send."""
REBUILDING = (
    "the collection {name!r} was dropped or replaced and is missing or empty now: "
    "the index is being rebuilt"
)
T = TypeVar("T")


@dataclass(frozen=True)
class Results:
    """A search: the query as prepared (kept for its buttons) and its first page."""

    prepared: PreparedQuery
    page: SearchPage


@dataclass(frozen=True)
class Stats:
    images: int
    device: str
    dtype: str
    store: str
    tuned: str | None = None
    """How DTYPE=auto chose ("bfloat16, batch 32 (measured)"); None when DTYPE is set."""


class LiveSearch:
    """The search service over the collection, kept open for the bot: opened at start-up
    when the collection is there, else by the first request that needs it; opened again,
    once, when the collection was dropped or replaced under the running bot. Once a search
    has succeeded, a missing or empty collection is being rebuilt (`IndexRebuilding`)."""

    def __init__(self, settings: Settings, encoder: DualEncoder) -> None:
        self.settings = settings
        self.encoder = encoder
        self._search: SearchService | None = None
        self._batcher: MicroBatcher[str, PreparedQuery | SearchBotError] | None = None
        self._opening = asyncio.Lock()
        self._served = False
        """True once a search succeeded: a missing index afterwards means a rebuild."""

    def open(self) -> None:
        """Open the collection at start-up without loading its index (a count at rest); an
        empty or unreachable one is logged, and opened by a later request instead."""
        settings = self.settings
        try:
            search = SearchService.open(settings, self.encoder)
            images = search.store.count_at_rest()
        except (IndexEmpty, StoreUnavailable) as err:
            log.error("search is not available yet: %s", err)
            return
        self._use(search)
        self._served = images > 0
        if images:
            log.info("index %r holds %d pictures", settings.collection, images)
        else:
            log.error("index %r is empty: build it with index_builder.py", settings.collection)

    async def warm_up(self) -> None:
        """Load the collection's index now, before a search needs it. Embedded Chroma loads
        a collection's whole index on its first read, which grows with the collection
        (docs/scaling.md), and its binding holds the GIL meanwhile, so nothing else in the
        process runs: the bot calls this once it is running, never during start-up.
        With a server it is one cheap count. A failure is only logged: the first search
        reports it to its user."""
        if self._search is None:
            return
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._search.store.count)
        except Exception as err:  # a dropped collection, an unreachable server, ...
            log.warning("could not load the index ahead of the first search: %s", err)
        else:
            log.info("index loaded in %.1f s", time.perf_counter() - started)

    async def run(self, call: Callable[[SearchService], Awaitable[T]]) -> T:
        """`call` with the open search service; when its collection was dropped or replaced,
        open the collection again once and retry."""
        try:
            search = await self._service()
            try:
                result = await call(search)
            except IndexGone:
                log.warning(
                    "collection %r was dropped or replaced: reopening it", search.store.name
                )
                self._search = self._batcher = None
                result = await call(await self._service())
        except IndexGone as err:
            self._search = self._batcher = None
            raise IndexRebuilding(REBUILDING.format(name=self.settings.collection)) from err
        except IndexEmpty as err:
            if self._served:
                raise IndexRebuilding(REBUILDING.format(name=self.settings.collection)) from err
            raise
        self._served = True
        return result

    async def prepare_text(self, text: str) -> PreparedQuery:
        """`text` prepared through the micro-batcher: concurrent texts share one encoder call
        (raises `EmptyQuery` and the other errors of `prepare`)."""

        async def call(search: SearchService) -> PreparedQuery:
            assert self._batcher is not None
            prepared = await self._batcher.submit(text)
            if isinstance(prepared, SearchBotError):
                raise prepared
            return prepared

        return await self.run(call)

    @property
    def files(self) -> SendableFiles:
        """The guard every picture read to be sent goes through (only indexed files)."""
        assert self._search is not None, "no search has run yet"
        return self._search.files

    def _use(self, search: SearchService) -> None:
        self._search = search
        max_batch = MAX_TEXT_BATCH if self.settings.micro_batch else 1
        self._batcher = MicroBatcher(
            lambda texts: _prepare_texts(search, texts), max_batch=max_batch
        )

    async def _service(self) -> SearchService:
        """The open search service, opening the collection first when needed (raises
        `IndexEmpty`, `StoreUnavailable`)."""
        if self._search is None:
            async with self._opening:
                if self._search is None:
                    search = await asyncio.to_thread(
                        SearchService.open, self.settings, self.encoder
                    )
                    self._use(search)
                    log.info("search is available now")
        assert self._search is not None
        return self._search


class Services:
    """What the handlers use: `await search_text(...)`, `search_photo(...)`, `similar(...)`,
    `page(...)`, `original(...)`, `stats()`, `ask(...)`: the collection kept open by
    `LiveSearch`, /ask served by `AskService`. Both models share one lifecycle
    (`core.models.lifecycle`): loaded by `start` (BLIP-2 with VQA_PRELOAD, else on the first
    question), freed by `close`."""

    def __init__(self, settings: Settings, encoder: DualEncoder, vqa: VqaModel | None) -> None:
        self.settings = settings
        self.encoder = encoder
        self._live = LiveSearch(settings, encoder)
        self.decode_slots = max(1, DECODE_MEMORY_BUDGET // (settings.max_image_pixels * 4))
        self._decodes = threading.BoundedSemaphore(self.decode_slots)
        self._asking = AskService(settings, vqa, self._decodes) if vqa is not None else None
        self.library = (
            LibraryService(settings, encoder, self._decodes) if settings.library_enabled else None
        )
        """The chats' libraries (LIBRARY_ENABLED), else None."""

    @classmethod
    def start(cls, settings: Settings) -> Services:
        """Load CLIP (and BLIP-2 with VQA_PRELOAD) and open the collection, before the bot
        takes any message.

        Raises `ModelUnavailable` or `ModelMismatch` (nothing would work); an empty or
        unreachable index is logged and retried on each request instead.
        """
        encoder = DualEncoder.from_settings(settings)
        encoder.load()
        vqa = VqaModel.from_settings(settings) if settings.vqa_enabled else None
        if vqa is not None and settings.vqa_preload:
            vqa.load()
        services = cls(settings, encoder, vqa)
        services._live.open()
        if services.library is not None:
            services.library.open()
        return services

    async def warm_up(self) -> None:
        """Load the collection's index once the bot runs (`LiveSearch.warm_up`)."""
        await self._live.warm_up()

    def close(self) -> None:
        """The bot's shutdown: drop the questions waiting and free both models' weights."""
        if self._asking is not None:
            self._asking.close()
        self.encoder.close()

    async def search_text(
        self, text: str, *, k: int | None = None, offset: int = 0, chat_id: int | None = None
    ) -> Results:
        """The best pictures for `text` (already cleaned): prepared through the micro-batcher
        (concurrent texts share one encoder call), then its page at `offset` of `k` results
        (TOP_K by default), with the library of `chat_id` when it has one. Raises
        `EmptyQuery` and the other errors of `prepare`."""
        prepared = await self._live.prepare_text(text)
        return Results(prepared, await self.page(prepared, k=k, offset=offset, chat_id=chat_id))

    async def search_photo(
        self,
        data: bytes,
        caption: str = "",
        *,
        chat_id: int | None = None,
        itself: str | None = None,
    ) -> Results:
        """The pictures most like the picture in `data`, changed by the words of `caption`
        (raises `BadImage`), never `itself` (its own id in the chat's library). At most
        `decode_slots` pictures are decoded at once."""

        def prepare(search: SearchService) -> PreparedQuery:
            with self._decodes:
                return search.prepare(Query(text=caption, picture=data))

        prepared = await self._live.run(lambda search: asyncio.to_thread(prepare, search))
        if itself is not None:
            prepared = replace(prepared, exclude=(*prepared.exclude, itself))
        return Results(prepared, await self.page(prepared, chat_id=chat_id))

    async def similar(self, image_id: str, *, chat_id: int | None = None) -> Results:
        """The pictures most like the picture `image_id` (indexed, or of the library of
        `chat_id`), by its stored vector."""
        query = Query(like_id=image_id)
        if is_library_id(image_id):
            vector = None
            if self.library is not None and self.library.available and chat_id is not None:
                vector = await self.library.vector(chat_id, image_id)
            if vector is None:
                raise UnknownPicture("that picture is not in this chat's library any more")
            query = Query(like_id=image_id, like_vector=tuple(float(v) for v in vector))
        prepared = await self._live.run(lambda search: asyncio.to_thread(search.prepare, query))
        return Results(prepared, await self.page(prepared, chat_id=chat_id))

    async def page(
        self,
        prepared: PreparedQuery,
        *,
        k: int | None = None,
        offset: int = 0,
        nearest_anyway: bool = False,
        chat_id: int | None = None,
    ) -> SearchPage:
        """Results `offset + 1` … `offset + k` of a prepared query (k = TOP_K by default),
        with the pictures of the library of `chat_id` among them (none without a chat)."""
        k = k or self.settings.top_k
        scope = self.library.scope(chat_id) if self.library is not None else None
        return await self._live.run(
            lambda search: asyncio.to_thread(
                search.page, prepared, k, offset, nearest_anyway=nearest_anyway, library=scope
            )
        )

    async def original(self, image_id: str, path: str) -> bytes:
        """The bytes of an indexed picture's file, read through the guard and decoded as an
        album's photo is before they are returned, so that nothing but a picture is sent
        (raises `RefusedFile`, `BadImage`)."""

        def read(search: SearchService) -> bytes:
            data = search.files.read(image_id, path).data
            with self._decodes:
                check_picture(data)
            return data

        return await self._live.run(lambda search: asyncio.to_thread(read, search))

    @property
    def files(self) -> SendableFiles:
        """The guard every picture read to be sent goes through (only indexed files)."""
        return self._live.files

    async def stats(self) -> Stats:
        """/stats: the pictures indexed, where and how the encoder runs, and the store."""

        def count(search: SearchService) -> tuple[int, str]:
            return search.store.count(), search.store.description

        images, store = await self._live.run(lambda search: asyncio.to_thread(count, search))
        return Stats(
            images=images,
            device=str(self.encoder.device),
            dtype=str(self.encoder.dtype).removeprefix("torch."),
            store=store,
            tuned=tuning.summary() if (tuning := self.encoder.tuning) else None,
        )

    async def categories(self) -> tuple[str, ...]:
        """The categories the index records (its #hashtags), for /help; none for an index
        without them, and none while the index cannot be read (/help answers all the same)."""
        try:
            return await self._live.run(lambda search: asyncio.to_thread(search.store.categories))
        except SearchBotError as err:
            log.info("/help without the index's categories: %s", err)
            return ()

    @property
    def ask_enabled(self) -> bool:
        """Whether /ask is served (VQA_ENABLED)."""
        return self._asking is not None

    @property
    def vqa_ready(self) -> bool:
        """False until BLIP-2 is loaded (the first answer then takes longer)."""
        return self._asking is not None and self._asking.ready

    @property
    def ask_retry_in(self) -> float | None:
        """Seconds until BLIP-2 is tried again after it failed to load (None: ask away)."""
        return self._asking.retry_in if self._asking is not None else None

    @property
    def ask_slots(self) -> AskSlots:
        """Who may queue a question (`AskService.slots`; only with /ask enabled)."""
        return self._ask().slots

    async def ask(
        self, key: str, download: Callable[[], Awaitable[bytes]], question: str | None
    ) -> str:
        """BLIP-2's answer about the picture known as `key` (`AskService.ask`)."""
        return await self._ask().ask(key, download, question)

    def _ask(self) -> AskService:
        assert self._asking is not None, "VQA is disabled"
        return self._asking


def _prepare_texts(search: SearchService, texts: list[str]) -> list[PreparedQuery | SearchBotError]:
    """Prepare a batch of texts in one encoder call. When the batch fails with a domain error
    (one text is an unknown #category, say), each text is prepared alone, so that only the
    text at fault gets the error."""
    try:
        return list(search.prepare_texts(texts))
    except SearchBotError as err:
        if len(texts) == 1:
            return [err]
    results: list[PreparedQuery | SearchBotError] = []
    for text in texts:
        try:
            results.append(search.prepare(Query(text=text)))
        except SearchBotError as err:
            results.append(err)
    return results
