"""The core services as the bot uses them: async, and never running a model on the event loop.

Text searches go through a micro-batcher (concurrent queries share one encoder call);
image searches run in worker threads. When the index is missing or the store unreachable
at start-up the bot still starts: each request then retries opening it, so an operator can
build the index while the bot runs. When the collection is dropped or replaced under the
running bot (`index_builder.py --rebuild` on a Chroma server), it is opened again; while it
is missing or empty, users are told the index is being rebuilt.

Memory: at most `decode_slots` pictures from users are decoded at once (each may cost a
full-size buffer of MAX_IMAGE_PIXELS × 4 bytes before it is reduced).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from bot.limits import AskSlots
from core.batching import MicroBatcher
from core.config import Settings
from core.errors import BadImage, IndexEmpty, IndexGone, IndexRebuilding, StoreUnavailable
from core.images import load_image
from core.indexed_files import IndexedFiles
from core.models.clip import ClipEncoder
from core.models.vqa import VqaModel
from core.search import Hit, SearchService

log = logging.getLogger(__name__)

MAX_TEXT_BATCH = 8
"""Measured (bench/bot_load.py): batches of 8 keep albums flowing out under a burst and beat
no batching on p50 and p95; batches of 32 made everyone wait for the whole batch."""
DECODE_MEMORY_BUDGET = 512 * 1024 * 1024
"""Bytes the bot may spend at once on full-size buffers of pictures users send."""
VQA_DECODE_SIDE = 448
"""BLIP-2 looks at 224×224: pictures for /ask are decoded to twice that, not full size."""
REBUILDING = (
    "the collection {name!r} was dropped or replaced and is missing or empty now: "
    "the index is being rebuilt"
)
T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    images: int
    model: str
    device: str
    dtype: str
    store: str


class Services:
    """What the handlers use: `await search_text(...)`, `search_image(...)`, `ask(...)`."""

    def __init__(self, settings: Settings, encoder: ClipEncoder, vqa: VqaModel | None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.vqa = vqa
        self._search: SearchService | None = None
        self._batcher: MicroBatcher[str, list[Hit]] | None = None
        self._opening = asyncio.Lock()
        self._served = False
        """True once a search succeeded: a missing index afterwards means a rebuild."""
        # One BLIP-2 generation at a time: questions queue here, searches keep flowing.
        self._vqa_queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa")
        self.decode_slots = max(1, DECODE_MEMORY_BUDGET // (settings.max_image_pixels * 4))
        self._decodes = threading.BoundedSemaphore(self.decode_slots)
        self.ask_slots = AskSlots(settings.ask_queue_size)

    @classmethod
    def start(cls, settings: Settings) -> Services:
        """Load CLIP (and BLIP-2 with VQA_PRELOAD) and open the collection, before the bot
        takes any message.

        Raises `ModelUnavailable` or `ModelMismatch` (nothing would work); an empty or
        unreachable index is logged and retried on each request instead.
        """
        encoder = ClipEncoder.from_settings(settings)
        encoder.load()
        vqa = None
        if settings.vqa_enabled:
            vqa = VqaModel(
                settings.vqa_model,
                device=settings.device,
                dtype=settings.dtype,
                max_new_tokens=settings.vqa_max_new_tokens,
                num_beams=settings.vqa_num_beams,
                timeout_s=settings.vqa_timeout_s,
            )
            if settings.vqa_preload:
                vqa.load()
        services = cls(settings, encoder, vqa)
        try:
            search = SearchService.open(settings, encoder)
            images = search.store.count()
        except (IndexEmpty, StoreUnavailable) as err:
            log.error("search is not available yet: %s", err)
            return services
        services._use(search)
        services._served = images > 0
        if images:
            log.info("index %r holds %d pictures", settings.collection, images)
        else:
            log.error("index %r is empty: build it with index_builder.py", settings.collection)
        return services

    def _use(self, search: SearchService) -> None:
        self._search = search
        max_batch = MAX_TEXT_BATCH if self.settings.micro_batch else 1
        self._batcher = MicroBatcher(
            lambda queries: search.by_texts(queries, self.settings.top_k), max_batch=max_batch
        )

    async def _service(self) -> SearchService:
        if self._search is None:
            async with self._opening:
                if self._search is None:
                    try:
                        search = await asyncio.to_thread(
                            SearchService.open, self.settings, self.encoder
                        )
                    except IndexEmpty as err:
                        if self._served:
                            raise IndexRebuilding(
                                REBUILDING.format(name=self.settings.collection)
                            ) from err
                        raise
                    self._use(search)
                    log.info("search is available now")
        assert self._search is not None
        return self._search

    async def _searching(self, call: Callable[[SearchService], Awaitable[T]]) -> T:
        """`call` with the open search service; when its collection was dropped or replaced,
        open the collection again once and retry."""
        search = await self._service()
        try:
            result = await call(search)
        except IndexGone:
            log.warning("collection %r was dropped or replaced: reopening it", search.store.name)
            self._search = self._batcher = None
            try:
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

    async def search_text(self, query: str) -> list[Hit]:
        """The best pictures for `query` (already cleaned), micro-batched with others."""

        async def call(search: SearchService) -> list[Hit]:
            assert self._batcher is not None
            return await self._batcher.submit(query)

        return await self._searching(call)

    async def search_image(self, data: bytes) -> list[Hit]:
        """The pictures most like the picture in `data` (raises `BadImage`)."""
        image = await asyncio.to_thread(self._decode, data, self.encoder.input_size)

        async def call(search: SearchService) -> list[Hit]:
            return await asyncio.to_thread(search.by_image, image, self.settings.top_k)

        return await self._searching(call)

    @property
    def files(self) -> IndexedFiles:
        """The guard every picture read to be sent goes through (only indexed files)."""
        assert self._search is not None, "no search has run yet"
        return self._search.files

    def _decode(self, data: bytes, min_side: int) -> Image.Image:
        """Decode a user's picture, at most `decode_slots` at a time (bounded memory)."""
        with self._decodes:
            return load_image(data, min_side=min_side, max_pixels=self.settings.max_image_pixels)

    @property
    def ask_enabled(self) -> bool:
        return self.vqa is not None

    @property
    def vqa_ready(self) -> bool:
        """False until BLIP-2 is loaded (the first answer then takes longer)."""
        return self.vqa is not None and self.vqa.loaded

    async def ask(
        self, key: str, download: Callable[[], Awaitable[bytes]], question: str | None
    ) -> str:
        """BLIP-2's answer to `question` about the picture known as `key` (a caption without
        a question). `download` fetches it, only when its encoding is not kept from an
        earlier question (at most ASK_QUEUE_SIZE questions wait, far fewer than the
        encodings kept, so a kept one cannot be forgotten meanwhile). Raises `BadImage`,
        `ModelUnavailable`."""
        assert self.vqa is not None, "VQA is disabled"
        vqa = self.vqa
        data = None if vqa.knows(key) else await download()

        def picture() -> Image.Image:
            if data is None:
                raise BadImage("that picture is no longer at hand: ask again")
            return self._decode(data, VQA_DECODE_SIDE)

        def answer() -> str:
            return vqa.answer_about(key, picture, question)

        return await asyncio.get_running_loop().run_in_executor(self._vqa_queue, answer)

    def close(self) -> None:
        self._vqa_queue.shutdown(wait=False, cancel_futures=True)

    async def stats(self) -> Stats:
        images = await self._searching(lambda search: asyncio.to_thread(search.store.count))
        search = await self._service()
        return Stats(
            images=images,
            model=self.settings.clip_model,
            device=str(self.encoder.device),
            dtype=str(self.encoder.dtype).removeprefix("torch."),
            store=search.store.description,
        )
