"""Writing to the store: embedded batches upserted in order from a thread of their own,
gathered into larger upserts; captions embedded and synced; entries removed in batches;
collections dropped. Each count goes into the `BuildSummary` once the store confirmed it,
so an interrupted run reports exactly what the store holds.

Who uses it: core.indexing.build, for every step of a run that changes the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from core.indexing.pipeline import HELPER_NICE, lower_priority
from core.indexing.plan import CaptionPlan
from core.indexing.summary import BuildSummary
from core.store.database import Database, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

WRITE_QUEUE = 2
"""Embedded batches waiting for the store; the model waits only when the store is further
behind than this."""
WRITE_BATCHES = 8
"""Embedded batches per upsert: the writer gathers this many, since Chroma's CPU cost per
record falls as upserts grow (docs/benchmarks.md)."""
CAPTION_BATCH_SIZE = 256
REMOVE_BATCH_SIZE = 1000

_Batch = tuple[list[ImageRecord], np.ndarray]


class BatchWriter:
    """Stores embedded batches in a thread of its own, in order, behind a bounded queue.

    Batches are gathered and written `WRITE_BATCHES` at a time, the rest when the block
    ends. `summary.indexed` counts records once their upsert returned. Leaving the
    block by an error (also Ctrl-C) lets the write under way finish, writes what was
    gathered and drops the batches still queued, so the count is exactly what the store
    holds; an error in the writer (including a KeyboardInterrupt raised inside `upsert`)
    is raised again on the caller's thread.
    """

    def __init__(self, store: VectorStore[ImageRecord], summary: BuildSummary) -> None:
        self.store, self.summary = store, summary
        self.queue: queue.Queue[_Batch | None] = queue.Queue(WRITE_QUEUE)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self.thread.start()
        return self

    def put(self, records: list[ImageRecord], vectors: np.ndarray) -> None:
        """Queue a batch for the store; waits while the queue is full."""
        while True:
            self._raise()
            try:
                self.queue.put((records, vectors), timeout=0.1)
                return
            except queue.Full:
                continue

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is not None:
            self.stop.set()  # drop what is queued: it was never stored, never counted
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()
        if error is None:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        lower_priority(HELPER_NICE)
        gathered: list[_Batch] = []
        try:
            while True:
                item = self.queue.get()
                if item is None or self.stop.is_set():
                    break
                gathered.append(item)
                if len(gathered) >= WRITE_BATCHES:
                    self._write(gathered)
                    gathered = []
            self._write(gathered)  # the end, or a stop: what was gathered is stored
        except BaseException as err:
            self.error = err

    def _write(self, batches: list[_Batch]) -> None:
        if not batches:
            return
        records = [record for batch, _ in batches for record in batch]
        started = time.perf_counter()
        self.store.upsert(records, np.concatenate([vectors for _, vectors in batches]))
        self.summary.add_times(store=time.perf_counter() - started)
        self.summary.indexed += len(records)


def write_captions(
    store: VectorStore[CaptionRecord],
    todo: CaptionPlan,
    encoder: DualEncoder,
    summary: BuildSummary,
    progress: bool,
) -> None:
    """Remove `todo.remove`, then embed `todo.embed` as text and store them in batches of
    `CAPTION_BATCH_SIZE`, counted in `summary`."""
    if todo.remove:
        store.delete(todo.remove)
        summary.captions_removed += len(todo.remove)
    with tqdm(
        total=len(todo.embed),
        unit="caption",
        desc="embedding captions",
        disable=not progress or not todo.embed,  # no bar for nothing to do
    ) as bar:
        for start in range(0, len(todo.embed), CAPTION_BATCH_SIZE):
            chunk = todo.embed[start : start + CAPTION_BATCH_SIZE]
            store.upsert(chunk, encoder.embed_texts([c.caption for c in chunk]))
            summary.captions_indexed += len(chunk)
            bar.update(len(chunk))


def drop_collections(db: Database, names: Sequence[str], summary: BuildSummary) -> None:
    """Drop the collections `names` that exist, each listed in `summary.dropped` once it is
    gone (also when Ctrl-C lands mid-drop)."""
    for name in [name for name in names if db.info(name) is not None]:
        try:
            db.drop(name)
        finally:  # also when Ctrl-C lands mid-drop: the summary must say what is gone
            if db.info(name) is None:
                summary.dropped.append(name)
                log.info("dropped collection %s", name)


def remove(store: VectorStore, ids: Sequence[str], deleted: Callable[[int], None]) -> None:
    """Delete `ids` in batches of `REMOVE_BATCH_SIZE`, telling `deleted` how many went. A
    Ctrl-C mid-batch may leave part of it deleted: that part is told too, so the summary
    stays exact."""
    for start in range(0, len(ids), REMOVE_BATCH_SIZE):
        chunk = ids[start : start + REMOVE_BATCH_SIZE]
        try:
            store.delete(chunk)
        except KeyboardInterrupt:
            deleted(len(chunk) - len(store.get(chunk)))
            raise
        deleted(len(chunk))
