"""/ask as the bot serves it: BLIP-2's answers behind one worker thread, so questions queue
while searches keep flowing.

Who uses it: `bot.services.Services` builds it when VQA_ENABLED and closes it at shutdown;
the /ask handler reaches it through the services (`ask`, `ask_slots`, `vqa_ready`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from bot.limits import AskSlots
from core.config import Settings
from core.errors import BadImage, ImageProblem, ModelUnavailable
from core.images import load_image
from core.models.vqa import LOAD_RETRY_S, VqaModel

VQA_DECODE_SIDE = 448
"""BLIP-2 looks at 224×224: pictures for /ask are decoded to twice that, not full size."""


class AskService:
    """BLIP-2 for /ask: one answer at a time (a single worker thread), at most
    ASK_QUEUE_SIZE questions waiting (`slots`), and the pictures decoded within the bot's
    decode budget (`decodes`, shared with the photo searches).

    When BLIP-2 fails to load, the model is not tried again for `LOAD_RETRY_S`
    (`core.models.lifecycle`); `retry_in` says so ahead of a question, so that the bot can
    answer at once that questions are unavailable instead of announcing a load that will
    not happen, and without downloading the picture."""

    def __init__(
        self, settings: Settings, vqa: VqaModel, decodes: threading.BoundedSemaphore
    ) -> None:
        self.vqa = vqa
        self.slots = AskSlots(settings.ask_queue_size)
        self._max_pixels = settings.max_image_pixels
        self._decodes = decodes
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa")
        self._clock = time.monotonic
        self._unavailable_until = 0.0
        """When the model may be tried again after a failed load (monotonic seconds)."""

    @property
    def ready(self) -> bool:
        """False until BLIP-2 is loaded (the first answer then takes longer)."""
        return self.vqa.loaded

    @property
    def retry_in(self) -> float | None:
        """Seconds until BLIP-2 is tried again after a failed load; None when a question
        may be asked now."""
        left = self._unavailable_until - self._clock()
        return left if left > 0 and not self.vqa.loaded else None

    async def ask(
        self, key: str, download: Callable[[], Awaitable[bytes]], question: str | None
    ) -> str:
        """BLIP-2's answer to `question` about the picture known as `key` (a caption without
        a question). `download` fetches it, only when its encoding is not kept from an
        earlier question (at most ASK_QUEUE_SIZE questions wait, far fewer than the
        encodings kept, so a kept one cannot be forgotten meanwhile). Raises `BadImage`,
        `ModelUnavailable` (at once, without a download, while `retry_in`)."""
        vqa = self.vqa
        retry_in = self.retry_in
        if retry_in is not None:
            raise ModelUnavailable(
                f"BLIP-2 {vqa.model_name} did not load: not tried again for another "
                f"{retry_in:.0f} s"
            )
        data = None if vqa.knows(key) else await download()

        def picture() -> Image.Image:
            if data is None:
                raise BadImage(
                    "that picture is no longer at hand: ask again", reason=ImageProblem.GONE
                )
            with self._decodes:
                return load_image(data, min_side=VQA_DECODE_SIDE, max_pixels=self._max_pixels)

        def answer() -> str:
            return vqa.answer_about(key, picture, question)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._queue, answer)
        except ModelUnavailable:
            if not vqa.loaded:  # the load failed: the model refuses until LOAD_RETRY_S passed
                self._unavailable_until = self._clock() + LOAD_RETRY_S
            raise

    def close(self) -> None:
        """Drop the questions waiting and free BLIP-2's weights (the one being answered
        finishes with the weights it holds)."""
        self._queue.shutdown(wait=False, cancel_futures=True)
        self.vqa.close()
