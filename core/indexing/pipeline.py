"""Decode → encode: pictures are decoded (JPEG draft scaling) and preprocessed in worker
threads while the model embeds the previous batch on the caller's thread; each embedded
batch goes to a writer. The window of pictures in flight is bounded, so memory stays flat
however large the dataset; a bad picture is reported with its reason and skipped.

Who uses it: core.indexing.build (a run's "embedding images" step), and
core.indexing.writer for the priority of its thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from core.errors import BadImage
from core.images import decode_image
from core.indexing.summary import BuildSummary
from core.store.records import ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

HELPER_NICE = 5
"""How much lower the CPU priority of the decode and writer threads is than the model's
(Linux `nice` steps; 0 = the same)."""

Write = Callable[[list[ImageRecord], np.ndarray], None]
"""Where embedded batches go: records and their vectors, row by row."""

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class _Prepared:
    """A decoded picture's pixels, ready for a batch, and the CPU time it took."""

    record: ImageRecord
    pixels: np.ndarray
    decode_s: float
    preprocess_s: float


@dataclass(frozen=True)
class Pipeline:
    """Decode and preprocess in `workers` threads, embed in batches of `batch_size` on the
    caller's thread, hand each batch to a writer.

    The model is the one thing that must never wait: decoding runs ahead by up to two
    batches and the writer takes up to `core.indexing.writer.WRITE_QUEUE` batches, both in
    threads of lower CPU priority (`HELPER_NICE`) than the model's, so on a machine with few
    cores they use what the model leaves idle instead of stalling its threads.
    """

    encoder: DualEncoder
    batch_size: int
    workers: int
    max_pixels: int
    """Pictures with more pixels are refused (decompression bombs)."""
    progress: bool = True

    def run(self, records: Sequence[ImageRecord], write: Write, summary: BuildSummary) -> None:
        """Embed `records` and `write` them batch by batch; bad pictures go to
        `summary.bad`, time by step to `summary.timings`."""
        batch: list[_Prepared] = []
        window = max(2 * self.batch_size, 4 * self.workers)
        with tqdm(
            total=len(records),
            unit="img",
            desc="embedding images",
            disable=not self.progress or not records,
            smoothing=0.1,
        ) as bar:
            waited = time.perf_counter()
            for record, result in _bounded_map(
                self._prepare, records, self.workers, window, HELPER_NICE
            ):
                summary.add_times(waiting_for_decode=time.perf_counter() - waited)
                if isinstance(result, BaseException):
                    _skip(record, result, summary)
                else:
                    summary.add_times(
                        decode_cpu=result.decode_s, preprocess_cpu=result.preprocess_s
                    )
                    batch.append(result)
                    if len(batch) >= self.batch_size:
                        self._embed(batch, write, summary)
                        batch = []
                bar.update(1)
                waited = time.perf_counter()
            self._embed(batch, write, summary)

    def _prepare(self, record: ImageRecord) -> _Prepared:
        """Decode `record`'s picture (noting its size when unknown) and preprocess it; in
        a decode thread."""
        started = time.thread_time()
        decoded = decode_image(
            record.path, min_side=self.encoder.input_size, max_pixels=self.max_pixels
        )
        decoded_at = time.thread_time()
        if not record.width:
            record = replace(record, width=decoded.width, height=decoded.height)
        pixels = self.encoder.prepare(decoded.image)
        return _Prepared(record, pixels, decoded_at - started, time.thread_time() - decoded_at)

    def _embed(self, batch: list[_Prepared], write: Write, summary: BuildSummary) -> None:
        if not batch:
            return
        started = time.perf_counter()
        pixels = self.encoder.batch_pixels([p.pixels for p in batch])
        ready = time.perf_counter()
        vectors = self.encoder.embed_pixels(pixels, self.batch_size)
        embedded = time.perf_counter()
        write([p.record for p in batch], vectors)
        summary.add_times(batch_pixels=ready - started, model=embedded - ready)
        summary.add_times(waiting_for_store=time.perf_counter() - embedded)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (Linux: per thread); elsewhere, or
    when not allowed, leave it."""
    if nice > 0 and hasattr(os, "setpriority"):
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _skip(record: ImageRecord, error: BaseException, summary: BuildSummary) -> None:
    """Note a picture that cannot be embedded in `summary.bad`, which the summary and the
    bad-image report show once each (here only at DEBUG: not a second time, amid the bar)."""
    reason = str(error) if isinstance(error, BadImage) else repr(error)
    log.debug("skipped %s: %s", record.path, reason)
    summary.bad.append((record.path, reason))


def _bounded_map(
    func: Callable[[T], U], items: Iterable[T], workers: int, window: int, nice: int = 0
) -> Iterator[tuple[T, U | BaseException]]:
    """`func` over `items` in a thread pool, in order, with at most `window` in flight.

    Yields (item, result) or (item, the exception it raised): one failure never stops the
    rest. Bounded, so a slow consumer never makes the pending results pile up in memory.
    The pool's threads run `nice` steps below the caller's CPU priority.
    """
    pool = ThreadPoolExecutor(
        max_workers=max(1, workers),
        thread_name_prefix="decode",
        initializer=lower_priority,
        initargs=(nice,),
    )
    pending: deque[tuple[T, Future[U]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(func, item)))
            if len(pending) >= window:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(item: T, future: Future[U]) -> tuple[T, U | BaseException]:
    try:
        return item, future.result()
    except Exception as err:
        return item, err
