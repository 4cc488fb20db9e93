"""Build or refresh an index: reader → decode (worker threads) → encode (batches) → store.

- Resumable: every batch is written as soon as it is embedded, under stable ids, so a run
  killed at any moment loses at most the batch in flight; the rerun skips what is stored.
- Incremental: a stored picture is re-embedded only when its path, size or mtime changed;
  entries of this source whose file is gone are removed; new files are added.
- Fast: decoding, JPEG draft scaling and preprocessing run in worker threads while the
  model embeds the previous batch; the window of pictures in flight is bounded, so memory
  stays flat however large the dataset.
- Robust: a bad picture is reported with its reason and skipped, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from core.config import Settings
from core.datasets import Reader, Scan
from core.errors import BadImage
from core.images import decode_image
from core.models.clip import ClipEncoder
from core.records import CaptionRecord, ImageRecord
from core.store import Database, VectorStore

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = 2
CAPTION_BATCH_SIZE = 256

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
    total: int = 0
    """Vectors in the image collection after the run."""
    elapsed_s: float = 0.0
    embed_s: float = 0.0
    """Time spent in the decode → encode → store loop."""
    report: Path | None = None
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.embed_s if self.embed_s > 0 else 0.0

    @property
    def up_to_date(self) -> bool:
        """True when the run found nothing to add, change or remove."""
        return not (self.indexed or self.removed or self.captions_indexed or self.captions_removed)


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


def run(
    settings: Settings,
    reader: Reader,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    rebuild: bool = False,
    with_captions: bool = False,
    progress: bool = True,
    compile_model: bool = False,
    encoder: ClipEncoder | None = None,
) -> IndexSummary:
    """Bring the collection `settings.collection` up to date with `reader`'s pictures.

    `compile_model`: torch.compile the image tower first (faster big builds, see ClipEncoder).
    """
    started = time.perf_counter()
    log.info("scanning %s", reader.description)
    scan = reader.scan()  # before loading any model: a broken dataset fails fast
    if scan.missing:
        log.warning("%d pictures listed but missing on disk (see the report)", len(scan.missing))
    encoder = encoder or ClipEncoder.from_settings(settings)
    encoder.load()
    db = Database(settings)
    captions_name = f"{settings.collection}_captions"
    if rebuild:
        for name in (settings.collection, captions_name):
            if db.drop(name):
                log.info("dropped collection %s", name)
    store = db.open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim, create=True
    )
    summary = IndexSummary(
        source=reader.description, collection=settings.collection, missing=scan.missing
    )
    stored = {r.id: (r.path, r.file_size, r.mtime_ns) for r in store if reader.owns(r.split)}
    todo = plan(scan, stored, limit)
    summary.unchanged, summary.beyond_limit = todo.unchanged, todo.beyond_limit
    if todo.remove:
        store.delete(todo.remove)
        summary.removed = len(todo.remove)
        log.info("removed %d entries whose files are gone", summary.removed)

    if compile_model and todo.embed:
        log.info("compiling the image tower (about 30 s)")
        encoder.compile(batch_size)
    embed_started = time.perf_counter()
    try:
        _embed_images(
            todo.embed,
            encoder,
            store,
            summary,
            settings.max_image_pixels,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
        summary.embed_s = time.perf_counter() - embed_started
        if with_captions:
            captions = db.open(
                captions_name,
                CaptionRecord,
                model=settings.clip_model,
                dim=encoder.dim,
                create=True,
            )
            _sync_captions(scan, limit, reader, encoder, captions, summary, progress)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.embed_s = summary.embed_s or time.perf_counter() - embed_started
        log.warning("interrupted: what was embedded so far is stored; rerun to continue")
    summary.total = store.count()
    summary.report = _write_report(settings, summary)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _embed_images(
    records: list[ImageRecord],
    encoder: ClipEncoder,
    store: VectorStore[ImageRecord],
    summary: IndexSummary,
    max_pixels: int,
    *,
    batch_size: int,
    workers: int,
    progress: bool,
) -> None:
    """Decode and preprocess in `workers` threads, embed in batches, store each batch
    (counted in `summary.indexed` as soon as it is stored, so an interruption reports it)."""
    input_size = encoder.input_size

    def prepare(record: ImageRecord) -> tuple[ImageRecord, np.ndarray]:
        decoded = decode_image(record.path, min_side=input_size, max_pixels=max_pixels)
        if not record.width:
            record = replace(record, width=decoded.width, height=decoded.height)
        return record, encoder.preprocess([decoded.image])[0]

    batch: list[tuple[ImageRecord, np.ndarray]] = []

    def flush() -> None:
        if batch:
            vectors = encoder.embed_pixels(np.stack([pixels for _, pixels in batch]), batch_size)
            store.upsert([record for record, _ in batch], vectors)
            summary.indexed += len(batch)
            batch.clear()

    with tqdm(
        total=len(records),
        unit="img",
        desc="embedding images",
        disable=not progress or not records,
        smoothing=0.1,
    ) as bar:
        window = max(2 * batch_size, 4 * workers)
        for record, result in _bounded_map(prepare, records, workers, window):
            if isinstance(result, BaseException):
                reason = str(result) if isinstance(result, BadImage) else repr(result)
                log.warning("skipped %s: %s", record.path, reason)
                summary.bad.append((record.path, reason))
            else:
                batch.append(result)
                if len(batch) >= batch_size:
                    flush()
            bar.update(1)
        flush()


def _bounded_map(
    func: Callable[[T], U], items: Iterable[T], workers: int, window: int
) -> Iterator[tuple[T, U | BaseException]]:
    """`func` over `items` in a thread pool, in order, with at most `window` in flight.

    Yields (item, result) or (item, the exception it raised): one failure never stops the
    rest. Bounded, so a slow consumer never makes the pending results pile up in memory.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
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


def _sync_captions(
    scan: Scan,
    limit: int | None,
    reader: Reader,
    encoder: ClipEncoder,
    store: VectorStore[CaptionRecord],
    summary: IndexSummary,
    progress: bool,
) -> None:
    """Bring the caption collection up to date: every caption of the selected pictures
    embedded as text, captions of vanished pictures removed."""

    def captions_of(records: Iterable[ImageRecord]) -> Iterator[CaptionRecord]:
        for record in records:
            for n, text in enumerate(record.captions):
                yield CaptionRecord(f"{record.id}:{n}", record.id, text, record.split)

    present = {c.id for c in captions_of(scan.records)}
    stored = {c.id: c.caption for c in store if reader.owns(c.split)}
    selection = scan.records[:limit] if limit is not None else scan.records
    todo = [c for c in captions_of(selection) if stored.get(c.id) != c.caption]
    stale = [id_ for id_ in stored if id_ not in present]
    if stale:
        store.delete(stale)
        summary.captions_removed = len(stale)
    with tqdm(
        total=len(todo), unit="caption", desc="embedding captions", disable=not progress
    ) as bar:
        for start in range(0, len(todo), CAPTION_BATCH_SIZE):
            chunk = todo[start : start + CAPTION_BATCH_SIZE]
            store.upsert(chunk, encoder.embed_texts([c.caption for c in chunk]))
            summary.captions_indexed += len(chunk)
            bar.update(len(chunk))


def report_path(settings: Settings) -> Path:
    """Where the list of pictures that could not be indexed goes: next to the index."""
    return settings.chroma_path / f"{settings.collection}-bad-images.tsv"


def _write_report(settings: Settings, summary: IndexSummary) -> Path | None:
    path = report_path(settings)
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
