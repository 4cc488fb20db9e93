"""Build or refresh an index: reader → decode (worker threads) → encode (batches) → store.

Used by index_builder.py (the CLI) and by the tests and benchmarks that build an index.

- Resumable: every batch is written as soon as it is embedded, under stable ids, so a run
  killed at any moment loses at most the batch in flight; the rerun skips what is stored.
- Incremental: a stored picture is re-embedded only when its path, size or mtime changed;
  entries of this source whose file is gone are removed (with their captions); new files
  are added.
- Safe: a refresh that would remove more than a tenth of this source's entries (an empty or
  unmounted folder) stops before changing anything unless `prune` confirms it; one builder
  at a time writes to an embedded store (a lock file next to it); the folders the index is
  built from are recorded in the collection before the first picture is stored.
- Sharded: with `shard` (core.sources.shards) a run takes only its shard's pictures, and every rule
  above (new, changed, removed, the removal guard, captions) applies to that shard alone,
  so N builders of N shards fill one Chroma server together, at the same time.
- Honest: an interruption (Ctrl-C) after the scan is caught, and the summary says exactly
  what was dropped, removed and stored until then.
- Fast: decoding, JPEG draft scaling and preprocessing run in worker threads while the
  model embeds the previous batch; the window of pictures in flight is bounded, so memory
  stays flat however large the dataset.
- Robust: a bad picture is reported with its reason and skipped, never fatal.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from core.config import Settings
from core.errors import BadImage, ConfigError, StoreBusy, StoreUnavailable, UnsafeRemoval
from core.images import decode_image
from core.search.sendable_files import record_roots
from core.sources.scan import Reader, Scan
from core.sources.shards import EVERYTHING, Shard
from core.store.database import Database, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = 2
CAPTION_BATCH_SIZE = 256
REMOVE_BATCH_SIZE = 1000
MAX_UNCONFIRMED_REMOVAL = 0.10
"""A refresh may remove at most this share of a source's stored entries without `prune`."""
LOCK_NAME = "index_builder.lock"
"""The lock file in CHROMA_PATH that keeps a second builder off an embedded store."""
REBUILD_WITH_SHARD = (
    "--rebuild drops the whole collection, every shard's entries with it, so it does not go "
    "with --shard: build the new index into another COLLECTION with every shard's builder "
    "(the bots keep searching the old one meanwhile), then point the bots at it"
)

T = TypeVar("T")
U = TypeVar("U")


@dataclass
class IndexSummary:
    """What a run did."""

    source: str
    collection: str
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    beyond_limit: int = 0
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of every picture that could not be indexed."""
    captions_indexed: int = 0
    captions_removed: int = 0
    dropped: list[str] = field(default_factory=list)
    """Collections dropped by `rebuild`, as they were dropped."""
    total: int = 0
    """Vectors in the image collection after the run."""
    elapsed_s: float = 0.0
    embed_s: float = 0.0
    """Time spent in the decode → encode → store loop."""
    report: Path | None = None
    stage: str = ""
    """The step the run was in last ("removing entries whose files are gone", ...)."""
    interrupted: bool = False
    """Stopped by Ctrl-C during `stage`; the counts say what was done until then."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent embedding images, by step: decode_cpu and preprocess_cpu (CPU time of
    the decode threads), batch_pixels (finishing the batch's pixels: on a CPU torch's
    resize) and model (the model's thread), store (the writer thread), waiting_for_decode
    and waiting_for_store (the model's thread idle)."""

    def breakdown(self) -> str:
        """Milliseconds per indexed image by step, in one line."""
        n = max(1, self.indexed)
        return " · ".join(f"{name} {s / n * 1000:.2f} ms" for name, s in self.timings.items())

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.embed_s if self.embed_s > 0 else 0.0

    @property
    def changed(self) -> bool:
        """True when the run changed the store (dropped, removed or stored anything)."""
        return bool(
            self.dropped
            or self.indexed
            or self.removed
            or self.captions_indexed
            or self.captions_removed
        )

    @property
    def up_to_date(self) -> bool:
        """True when the run found nothing to add, change or remove."""
        return not self.changed


@dataclass(frozen=True)
class _Plan:
    embed: list[ImageRecord]
    remove: list[str]
    unchanged: int
    beyond_limit: int


def plan(scan: Scan, stored: dict[str, tuple[str, int, int]], limit: int | None) -> _Plan:
    """Decide what to embed and remove, given the scan and the stored (path, size, mtime)."""
    present = {r.id for r in scan.records}
    selection = scan.records[:limit] if limit is not None else scan.records
    embed = [r for r in selection if stored.get(r.id) != (r.path, r.file_size, r.mtime_ns)]
    remove = [id_ for id_ in stored if id_ not in present]
    return _Plan(embed, remove, len(selection) - len(embed), len(scan.records) - len(selection))


@dataclass(frozen=True)
class _Options:
    shard: Shard
    limit: int | None
    batch_size: int
    workers: int
    rebuild: bool
    with_captions: bool
    prune: bool
    progress: bool
    compile_model: bool


@dataclass
class _Job:
    """One run's inputs and its summary, handed from step to step."""

    settings: Settings
    reader: Reader
    scan: Scan
    encoder: DualEncoder
    db: Database
    options: _Options
    summary: IndexSummary

    @property
    def captions_name(self) -> str:
        return f"{self.settings.collection}_captions"


def run(
    settings: Settings,
    reader: Reader,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    rebuild: bool = False,
    with_captions: bool = False,
    prune: bool = False,
    wait: bool = False,
    progress: bool = True,
    compile_model: bool = False,
    encoder: DualEncoder | None = None,
    shard: Shard = EVERYTHING,
) -> IndexSummary:
    """Bring the collection `settings.collection` up to date with `reader`'s pictures (of
    `shard` only: the others' entries are never touched; `limit` counts within it).

    `prune`: confirm a removal of more than `MAX_UNCONFIRMED_REMOVAL` of this source's
    entries (else `UnsafeRemoval`, nothing changed). `wait`: wait for another builder on
    the same embedded store instead of raising `StoreBusy`. `compile_model`: torch.compile
    the image tower first (faster big builds, see DualEncoder). A Ctrl-C after the scan is
    caught: the summary is `interrupted` and says what was done.
    """
    started = time.perf_counter()
    if rebuild and not shard.whole:
        raise ConfigError(REBUILD_WITH_SHARD)
    options = _Options(
        shard, limit, batch_size, workers, rebuild, with_captions, prune, progress, compile_model
    )
    source = reader.description if shard.whole else f"{reader.description}, shard {shard}"
    with builder_lock(settings, wait=wait):
        scan = _scan(reader, source, shard)  # before loading any model: fails fast
        from core.models.encoder import DualEncoder  # here: it imports torch

        encoder = encoder or DualEncoder.from_settings(settings)
        encoder.load()
        summary = IndexSummary(source=source, collection=settings.collection, missing=scan.missing)
        job = _Job(settings, reader, scan, encoder, Database(settings), options, summary)
        try:
            _update(job)
        except KeyboardInterrupt:
            summary.interrupted = True
            log.warning("interrupted while %s", summary.stage)
        info = job.db.info(settings.collection)
        summary.total = info.count if info else 0
        summary.report = _write_report(settings, summary, shard)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _scan(reader: Reader, source: str, shard: Shard) -> Scan:
    """`reader`'s pictures of `shard`, logged."""
    log.info("scanning %s", source)
    scan = reader.scan()
    if not shard.whole:
        everything = len(scan.records) + len(scan.absent)
        scan = scan.only(shard.holds)
        log.info(
            "shard %s: %d of the source's %d pictures (the others are other shards')",
            shard,
            len(scan.records) + len(scan.absent),
            everything,
        )
    if scan.missing:
        log.warning("%d pictures listed but missing on disk (see the report)", len(scan.missing))
    return scan


def _update(job: _Job) -> None:
    """The steps that change the store, in order; `job.summary.stage` names the current one."""
    summary, options = job.summary, job.options
    if options.rebuild:
        _drop(job)
    summary.stage = "reading the index"
    store = job.db.open(
        job.settings.collection,
        ImageRecord,
        model=job.settings.clip_model,
        dim=job.encoder.dim,
        create=True,
    )
    stored = {r.id: r for r in store if _ours(job, r.split, r.id)}
    todo = plan(
        job.scan, {i: (r.path, r.file_size, r.mtime_ns) for i, r in stored.items()}, options.limit
    )
    summary.unchanged, summary.beyond_limit = todo.unchanged, todo.beyond_limit
    _check_removal(job, todo.remove, stored)  # before anything changes
    summary.stage = "recording the indexed folders"
    record_roots(job.settings, job.reader.roots)  # before the first upsert: a killed run too
    _record_categories(job, store, stored, todo.embed)
    _remove(job, store, todo.remove)
    _embed(job, store, todo.embed)
    if options.with_captions:
        summary.stage = "embedding captions"
        captions = job.db.open(
            job.captions_name,
            CaptionRecord,
            model=job.settings.clip_model,
            dim=job.encoder.dim,
            create=True,
        )
        _sync_captions(job, captions)
    summary.stage = "finishing"
    _confirm_metadata(job, store)


def _ours(job: _Job, split: str, image_id: str) -> bool:
    """Whether a stored entry belongs to this run: its source owns it and it is in the
    run's shard. Nothing else is ever removed or counted by the run."""
    return job.reader.owns(split) and job.options.shard.holds(image_id)


def _confirm_metadata(job: _Job, store: VectorStore[ImageRecord]) -> None:
    """Check, at the end, that the categories recorded at the start are still in the
    collection's metadata (a no-op when they are): another builder on the same server may
    have written it meanwhile from an older copy."""
    store.add_categories(_category_names(job.scan))


def _category_names(scan: Scan) -> set[str]:
    return {name for record in scan.records for name in record.categories}


def _record_categories(
    job: _Job,
    store: VectorStore[ImageRecord],
    stored: dict[str, ImageRecord],
    embed: Sequence[ImageRecord],
) -> None:
    """Record the categories the pictures hold in the collection (for #hashtags), and
    relabel stored pictures whose categories changed but whose file did not (an
    instances file added later): their metadata is updated, nothing is re-embedded."""
    names = _category_names(job.scan)
    if names:
        job.summary.stage = "recording the categories"
        store.add_categories(names)
    to_embed = {r.id for r in embed}
    relabel = [
        r
        for r in job.scan.records
        if r.id in stored and r.id not in to_embed and stored[r.id].categories != r.categories
    ]
    if relabel:
        keep = {r.id: stored[r.id] for r in relabel}
        store.update_metadata([replace(r, width=keep[r.id].width or r.width) for r in relabel])
        log.info("updated the categories of %d stored pictures", len(relabel))


def _drop(job: _Job) -> None:
    """`rebuild`: drop the image and caption collections, refusing to empty an index for a
    source that holds nothing (an unmounted folder) unless `prune` confirms it."""
    info = job.db.info(job.settings.collection)
    if info and info.count and not job.scan.records and not job.options.prune:
        raise UnsafeRemoval(
            f"{job.reader.description} holds no pictures, and --rebuild would drop collection "
            f"{info.name!r} with its {info.count:,} entries: is the folder mounted? Nothing was "
            "changed; rerun with --prune to confirm"
        )
    job.summary.stage = "dropping collections (--rebuild)"
    names = (job.settings.collection, job.captions_name)
    for name in [name for name in names if job.db.info(name) is not None]:
        try:
            job.db.drop(name)
        finally:  # also when Ctrl-C lands mid-drop: the summary must say what is gone
            if job.db.info(name) is None:
                job.summary.dropped.append(name)
                log.info("dropped collection %s", name)


def _check_removal(job: _Job, remove: Sequence[str], stored: dict[str, ImageRecord]) -> None:
    """Raise `UnsafeRemoval` when removing `remove` needs the operator's `prune`."""
    n, of = len(remove), len(stored)
    if not n or job.options.prune or (n < of and n <= of * MAX_UNCONFIRMED_REMOVAL):
        return
    on_disk = {r.path for r in job.scan.records}
    rekeyed = sum(1 for id_ in remove if stored[id_].path in on_disk)
    source = job.summary.source
    if rekeyed == n:
        raise UnsafeRemoval(
            f"{n:,} of the {of:,} stored entries of {source} were indexed by an older version, "
            "under ids that can clash with another folder's; refreshing re-embeds them under "
            "new ids. Nothing was changed; rerun with --prune to confirm (or with --rebuild)"
        )
    also = f" ({rekeyed:,} of them are on disk and will be re-embedded)" if rekeyed else ""
    raise UnsafeRemoval(
        f"refusing to remove {n:,} of the {of:,} stored entries of {source}: their files are "
        f"gone{also}. Is the folder mounted? Nothing was changed; rerun with --prune to confirm "
        "the removal"
    )


def _remove(job: _Job, store: VectorStore[ImageRecord], ids: Sequence[str]) -> None:
    """Remove entries whose files are gone, their captions first (never left as orphans)."""
    if not ids:
        return
    job.summary.stage = "removing entries whose files are gone"
    _remove_captions_of(job, set(ids))

    def removed(n: int) -> None:
        job.summary.removed += n

    _delete(store, ids, removed)
    log.info("removed %d entries whose files are gone", job.summary.removed)


def _remove_captions_of(job: _Job, image_ids: set[str]) -> None:
    """Remove the captions of `image_ids` from the captions collection, if there is one
    (whether or not this run embeds captions)."""
    if job.db.info(job.captions_name) is None:
        return
    captions = job.db.open(
        job.captions_name, CaptionRecord, model=job.settings.clip_model, dim=job.encoder.dim
    )
    ids = [c.id for c in captions if c.image_id in image_ids and _ours(job, c.split, c.image_id)]

    def removed(n: int) -> None:
        job.summary.captions_removed += n

    _delete(captions, ids, removed)


def _embed(job: _Job, store: VectorStore[ImageRecord], records: list[ImageRecord]) -> None:
    """Compile the model if asked (and there is work), then embed and store `records`."""
    options, summary = job.options, job.summary
    if options.compile_model and records:
        summary.stage = "compiling the image tower"
        log.info("compiling the image tower (about 30 s)")
        job.encoder.compile(options.batch_size)
    summary.stage = "embedding images"
    started = time.perf_counter()
    try:
        _embed_images(
            records,
            job.encoder,
            store,
            summary,
            job.settings.max_image_pixels,
            batch_size=options.batch_size,
            workers=options.workers,
            progress=options.progress,
        )
    finally:
        summary.embed_s = time.perf_counter() - started


def _embed_images(
    records: list[ImageRecord],
    encoder: DualEncoder,
    store: VectorStore[ImageRecord],
    summary: IndexSummary,
    max_pixels: int,
    *,
    batch_size: int,
    workers: int,
    progress: bool,
) -> None:
    """Decode and preprocess in `workers` threads, embed in batches on this thread, store
    each batch from a writer thread (counted in `summary.indexed` once it is stored, so an
    interruption reports exactly what was stored).

    The model is the one thing that must never wait: decoding runs ahead by up to two
    batches and the writer takes up to `WRITE_QUEUE` batches, both in threads of lower
    CPU priority (`HELPER_NICE`) than the model's, so on a machine with few cores they use
    what the model leaves idle instead of stalling its threads.
    """
    input_size = encoder.input_size
    times = summary.timings

    def prepare(record: ImageRecord) -> tuple[ImageRecord, np.ndarray, float, float]:
        started = time.thread_time()
        decoded = decode_image(record.path, min_side=input_size, max_pixels=max_pixels)
        decoded_at = time.thread_time()
        if not record.width:
            record = replace(record, width=decoded.width, height=decoded.height)
        pixels = encoder.prepare(decoded.image)
        return record, pixels, decoded_at - started, time.thread_time() - decoded_at

    batch: list[tuple[ImageRecord, np.ndarray]] = []
    writer = _Writer(store, summary)

    def flush() -> None:
        if batch:
            started = time.perf_counter()
            pixels = encoder.batch_pixels([pixels for _, pixels in batch])
            ready = time.perf_counter()
            vectors = encoder.embed_pixels(pixels, batch_size)
            embedded = time.perf_counter()
            writer.put([record for record, _ in batch], vectors)
            _add(times, batch_pixels=ready - started, model=embedded - ready)
            _add(times, waiting_for_store=time.perf_counter() - embedded)
            batch.clear()

    with (
        tqdm(
            total=len(records),
            unit="img",
            desc="embedding images",
            disable=not progress or not records,
            smoothing=0.1,
        ) as bar,
        writer,
    ):
        window = max(2 * batch_size, 4 * workers)
        waited = time.perf_counter()
        for record, result in _bounded_map(prepare, records, workers, window, HELPER_NICE):
            _add(times, waiting_for_decode=time.perf_counter() - waited)
            if isinstance(result, BaseException):
                reason = str(result) if isinstance(result, BadImage) else repr(result)
                log.warning("skipped %s: %s", record.path, reason)
                summary.bad.append((record.path, reason))
            else:
                record, pixels, decode_s, preprocess_s = result
                _add(times, decode_cpu=decode_s, preprocess_cpu=preprocess_s)
                batch.append((record, pixels))
                if len(batch) >= batch_size:
                    flush()
            bar.update(1)
            waited = time.perf_counter()
        flush()
    if summary.indexed:
        log.info("per image: %s", summary.breakdown())


WRITE_QUEUE = 2
"""Embedded batches waiting for the store; the model waits only when the store is further
behind than this."""
WRITE_BATCHES = 8
"""Embedded batches per upsert: the writer gathers this many (Chroma's CPU cost per record
falls from 1.3 ms in upserts of 32 records to 0.9 in upserts of 256 or more)."""
HELPER_NICE = 5
"""How much lower the CPU priority of the decode and writer threads is than the model's
(Linux `nice` steps; 0 = the same)."""


class _Writer:
    """Stores embedded batches in a thread of its own, in order, behind a bounded queue.

    Batches are gathered and written `WRITE_BATCHES` at a time, the rest when the block
    ends. `summary.indexed` counts records once their upsert returned. Leaving the
    block by an error (also Ctrl-C) lets the write under way finish, writes what was
    gathered and drops the batches still queued, so the count is exactly what the store
    holds; an error in the writer (including a
    KeyboardInterrupt raised inside `upsert`) is raised again on the caller's thread.
    """

    def __init__(self, store: VectorStore[ImageRecord], summary: IndexSummary) -> None:
        self.store, self.summary = store, summary
        self.queue: queue.Queue[tuple[list[ImageRecord], np.ndarray] | None] = queue.Queue(
            WRITE_QUEUE
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def put(self, records: list[ImageRecord], vectors: np.ndarray) -> None:
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
        _lower_priority(HELPER_NICE)
        gathered: list[tuple[list[ImageRecord], np.ndarray]] = []
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

    def _write(self, batches: list[tuple[list[ImageRecord], np.ndarray]]) -> None:
        if not batches:
            return
        records = [record for batch, _ in batches for record in batch]
        started = time.perf_counter()
        self.store.upsert(records, np.concatenate([vectors for _, vectors in batches]))
        _add(self.summary.timings, store=time.perf_counter() - started)
        self.summary.indexed += len(records)


def _add(times: dict[str, float], **seconds: float) -> None:
    for name, value in seconds.items():
        times[name] = times.get(name, 0.0) + value


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (Linux: per thread); elsewhere, or
    when not allowed, leave it."""
    if nice > 0 and hasattr(os, "setpriority"):
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


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
        initializer=_lower_priority,
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


def _sync_captions(job: _Job, store: VectorStore[CaptionRecord]) -> None:
    """Bring the caption collection up to date: every caption of the selected pictures
    embedded as text, captions of vanished pictures removed (of this run's shard only)."""
    scan, limit, summary, progress = job.scan, job.options.limit, job.summary, job.options.progress

    def captions_of(records: Iterable[ImageRecord]) -> Iterator[CaptionRecord]:
        for record in records:
            for n, text in enumerate(record.captions):
                yield CaptionRecord(f"{record.id}:{n}", record.id, text, record.split)

    present = {c.id for c in captions_of(scan.records)}
    stored = {c.id: c.caption for c in store if _ours(job, c.split, c.image_id)}
    selection = scan.records[:limit] if limit is not None else scan.records
    todo = [c for c in captions_of(selection) if stored.get(c.id) != c.caption]
    stale = [id_ for id_ in stored if id_ not in present]
    if stale:
        store.delete(stale)
        summary.captions_removed += len(stale)
    with tqdm(
        total=len(todo), unit="caption", desc="embedding captions", disable=not progress
    ) as bar:
        for start in range(0, len(todo), CAPTION_BATCH_SIZE):
            chunk = todo[start : start + CAPTION_BATCH_SIZE]
            store.upsert(chunk, job.encoder.embed_texts([c.caption for c in chunk]))
            summary.captions_indexed += len(chunk)
            bar.update(len(chunk))


def _delete(store: VectorStore, ids: Sequence[str], deleted: Callable[[int], None]) -> None:
    """Delete `ids` in batches, telling `deleted` how many went. A Ctrl-C mid-batch may
    leave part of it deleted: that part is counted too, so the summary stays exact."""
    for start in range(0, len(ids), REMOVE_BATCH_SIZE):
        chunk = ids[start : start + REMOVE_BATCH_SIZE]
        try:
            store.delete(chunk)
        except KeyboardInterrupt:
            deleted(len(chunk) - len(store.get(chunk)))
            raise
        deleted(len(chunk))


def report_path(settings: Settings, shard: Shard = EVERYTHING) -> Path:
    """Where the list of pictures that could not be indexed goes: next to the index, one
    list per shard (builders of several shards may share a CHROMA_PATH)."""
    part = "" if shard.whole else f"-shard-{shard.index}-of-{shard.count}"
    return settings.chroma_path / f"{settings.collection}-bad-images{part}.tsv"


def _write_report(settings: Settings, summary: IndexSummary, shard: Shard) -> Path | None:
    path = report_path(settings, shard)
    rows = [(p, "missing on disk") for p in summary.missing] + summary.bad
    if not rows:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("path\treason\n")
        for file, reason in rows:
            handle.write(f"{file}\t{' '.join(reason.split())}\n")
    return path


@contextmanager
def builder_lock(settings: Settings, *, wait: bool = False) -> Iterator[None]:
    """Hold the builder lock of an embedded store (`LOCK_NAME` in CHROMA_PATH, one per
    path: Chroma's embedded sqlite is per path) while the block runs.

    Another holder raises `StoreBusy` at once, or with `wait` is waited for. A Chroma
    server (CHROMA_HOST) takes no lock: builders of different shards run on it at once
    (two of the same shard would only do the same work twice: upserts by stable ids).
    """
    if settings.chroma_host:
        yield
        return
    path = settings.chroma_path / LOCK_NAME
    pid_file = path.with_name(LOCK_NAME + ".pid")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        _acquire(lock, settings.chroma_path, pid_file, wait)
    except OSError as err:
        raise StoreUnavailable(f"cannot lock {path}: {err}") from err
    try:
        pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()


def _acquire(lock: FileLock, where: Path, pid_file: Path, wait: bool) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        holder = _holder(pid_file)
    if not wait:
        raise StoreBusy(
            f"another index_builder{holder} is running on {where}; wait for it or rerun with --wait"
        )
    log.warning("another index_builder%s is running on %s; waiting for it to finish", holder, where)
    lock.acquire()
    log.info("the other index_builder finished; going on")


def _holder(pid_file: Path) -> str:
    """ " (pid N)" of the lock's holder when it wrote one, else ""."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})"
