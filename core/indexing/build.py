"""Build or refresh an index: `run` brings a collection up to date with a reader's pictures,
step by step: scan → plan (core.indexing.plan) → decode and encode (core.indexing.pipeline)
→ store (core.indexing.writer).

Who uses it: index_builder.py (the CLI), and the tests and benchmarks that build an index.

- Resumable: every batch is written as soon as it is embedded, under stable ids, so a run
  killed at any moment loses at most the batch in flight; the rerun skips what is stored.
- Incremental: a stored picture is re-embedded only when its path, size or mtime changed;
  entries of this source whose file is gone are removed (with their captions); new files
  are added.
- Safe: a refresh that would remove more than a tenth of this source's entries (an empty or
  unmounted folder) stops before changing anything unless `prune` confirms it; one builder
  at a time writes to an embedded store (a lock file next to it); the folders the index is
  built from are recorded in this host's roots file (core.search.sendable_files) before the
  first picture is stored.
- Sharded: with a `shard` (core.sources.shards) a run takes only its shard's pictures, and
  every rule above (new, changed, removed, the removal guard, captions) applies to that
  shard alone, so N builders of N shards fill one Chroma server together, at the same time.
- Honest: an interruption (Ctrl-C) after the scan is caught, and the summary says exactly
  what was dropped, removed and stored until then.
- Finished, or known not to be: before its first change a run records in the collection's
  metadata that its source's build is under way (`BuildRecord`: how many pictures it aims
  at), and only at its very end that it is complete. A run stopped in between (Ctrl-C,
  kill, power cut, an error) leaves the record saying so: `python -m core status` reports
  "incomplete: 10 of 40,504" and `make run` runs the builder again, which finishes it.
  The metadata is the store's, which is not trusted, but a record is only a hint: at worst
  the (incremental) builder runs once more, or an index stays as partial as its store
  made it.
- Tuned: at its end a run that changed the collection measures the text recall@10 of its
  searches against exact search on a sample of the captions, and records the search depth
  that reaches RECALL_TARGET (core.indexing.recall); one line of the output says what it
  found and what it cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from core.config import Settings
from core.errors import ConfigError
from core.indexing.lock import builder_lock
from core.indexing.pipeline import Pipeline
from core.indexing.plan import (
    Plan,
    category_names,
    check_rebuild,
    check_removal,
    plan,
    plan_captions,
)
from core.indexing.recall import RecallCheck, sample_texts, tune
from core.indexing.summary import BuildSummary
from core.indexing.writer import BatchWriter, drop_collections, remove, write_captions
from core.search.sendable_files import record_roots
from core.sources.scan import Reader, Scan
from core.sources.shards import EVERYTHING, Shard
from core.sources.units import format_duration, plural
from core.store.collection_info import BuildRecord
from core.store.database import Database, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = 2
CPU_IMAGES_PER_S = 29
"""Pictures per second end to end with the default model on a 2-core CPU, for the estimate
said before embedding (where it comes from: docs/benchmarks.md)."""
REBUILD_WITH_SHARD = (
    "--rebuild drops the whole collection, every shard's entries with it, so it does not go "
    "with --shard: build the new index into another COLLECTION with every shard's builder "
    "(the bots keep searching the old one meanwhile), then point the bots at it"
)

R = TypeVar("R", ImageRecord, CaptionRecord)


@dataclass(frozen=True)
class BuildOptions:
    """How `run` builds: which pictures, how they are embedded, what it may remove.
    index_builder.py makes one from its flags; the tests and benchmarks from keywords.

    Raises `ConfigError` for `rebuild` with a `shard` (`REBUILD_WITH_SHARD`)."""

    limit: int | None = None
    """Index only the first `limit` pictures in the reader's order (of `shard`)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Pictures per model call."""
    workers: int = DEFAULT_WORKERS
    """Threads decoding and preprocessing pictures while the model runs."""
    rebuild: bool = False
    """Drop the collection and its captions collection first."""
    with_captions: bool = False
    """Also embed every caption as text into the collection `<COLLECTION>_captions`."""
    prune: bool = False
    """Confirm a removal of more than `core.indexing.plan.MAX_UNCONFIRMED_REMOVAL` of this
    source's entries, or a `rebuild` of a source that holds no pictures (else
    `UnsafeRemoval`, nothing changed)."""
    wait: bool = False
    """Wait for another builder on the same embedded store instead of raising `StoreBusy`."""
    progress: bool = True
    """Show progress bars."""
    compile_model: bool = False
    """torch.compile the image tower first (for big builds, see DualEncoder)."""
    shard: Shard = EVERYTHING
    """Only this shard's pictures: the other shards' entries are never touched."""

    def __post_init__(self) -> None:
        if self.rebuild and not self.shard.whole:
            raise ConfigError(REBUILD_WITH_SHARD)


@dataclass
class _Job:
    """One run's inputs and its summary, handed from step to step."""

    settings: Settings
    reader: Reader
    scan: Scan
    encoder: DualEncoder
    db: Database
    options: BuildOptions
    summary: BuildSummary

    @property
    def captions_name(self) -> str:
        return f"{self.settings.collection}_captions"

    def open(self, name: str, record_type: type[R], *, create: bool = False) -> VectorStore[R]:
        """Collection `name` of this run's model (made when missing with `create`)."""
        return self.db.open(
            name, record_type, model=self.settings.clip_model, dim=self.encoder.dim, create=create
        )

    def ours(self, split: str, image_id: str) -> bool:
        """Whether a stored entry belongs to this run: its source owns it and it is in the
        run's shard. Nothing else is ever removed or counted by the run."""
        return self.reader.owns(split) and self.options.shard.holds(image_id)


def run(
    settings: Settings,
    reader: Reader,
    options: BuildOptions = BuildOptions(),
    *,
    encoder: DualEncoder | None = None,
) -> BuildSummary:
    """Bring the collection `settings.collection` up to date with `reader`'s pictures, as
    `options` say; `encoder`: a loaded one to use instead of
    `DualEncoder.from_settings(settings)`.

    Raises `StoreBusy` while another builder holds an embedded store (see `builder_lock`)
    and `UnsafeRemoval` before changing anything when a removal needs `prune`. A Ctrl-C
    after the scan is caught: the summary is `interrupted` and says what was done.
    """
    started = time.perf_counter()
    shard = options.shard
    source = source_name(reader, shard)
    with builder_lock(settings, wait=options.wait):
        scan = _scan(reader, source, shard)  # before loading any model: fails fast
        from core.models.encoder import DualEncoder  # here: it imports torch

        encoder = encoder or DualEncoder.from_settings(settings)
        encoder.load()
        summary = BuildSummary(source=source, collection=settings.collection, missing=scan.missing)
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


def source_name(reader: Reader, shard: Shard = EVERYTHING) -> str:
    """What a run builds, for people and for its `BuildRecord`: the reader's description,
    and the shard when it takes one ("COCO2014 val2014 in /data/coco, shard 0/4")."""
    return reader.description if shard.whole else f"{reader.description}, shard {shard}"


def _scan(reader: Reader, source: str, shard: Shard) -> Scan:
    """`reader`'s pictures of `shard`, logged."""
    log.info("scanning %s", source)
    scan = reader.scan()
    if not shard.whole:
        everything = len(scan.records) + len(scan.absent)
        scan = scan.only(shard.holds)
        log.info(
            "shard %s: %s of the source's %s (the others are other shards')",
            shard,
            f"{len(scan.records) + len(scan.absent):,}",
            plural(everything, "picture"),
        )
    if scan.missing:
        listed = plural(len(scan.missing), "picture")
        log.warning("%s listed but missing on disk (see the report)", listed)
    return scan


def _update(job: _Job) -> None:
    """The steps that change the store, in order; `job.summary.stage` names the current one."""
    summary, options = job.summary, job.options
    if options.rebuild:
        _drop(job)
    summary.stage = "reading the index"
    store = job.open(job.settings.collection, ImageRecord, create=True)
    stored = {r.id: r for r in store if job.ours(r.split, r.id)}
    todo = plan(job.scan, stored, options.limit)
    summary.unchanged, summary.beyond_limit = todo.unchanged, todo.beyond_limit
    check_removal(todo.remove, stored, job.scan, summary.source, options.prune)  # before any change
    build = _build_record(job, store, stored, todo)
    if todo.embed or todo.remove or options.with_captions or options.rebuild:
        store.record_build(build)  # before the first change: "incomplete" until the end
    summary.stage = "recording the indexed folders"
    record_roots(job.settings, job.reader.roots)  # before the first upsert: a killed run too
    _record_categories(job, store, todo.relabel)
    _remove(job, store, todo.remove)
    _embed(job, store, todo.embed)
    if options.with_captions:
        summary.stage = "embedding captions"
        captions = job.open(job.captions_name, CaptionRecord, create=True)
        stored_captions = {c.id: c.caption for c in captions if job.ours(c.split, c.image_id)}
        todo_captions = plan_captions(job.scan, stored_captions, options.limit)
        write_captions(captions, todo_captions, job.encoder, summary, options.progress)
    summary.stage = "finishing"
    # Another builder on the same server may have rewritten the collection's metadata
    # meanwhile from an older copy: the categories recorded at the start are checked again.
    store.add_categories(category_names(job.scan))
    store.record_build(_finished(build, stored, todo, summary))
    _tune(job, store)


def _build_record(
    job: _Job, store: VectorStore[ImageRecord], stored: dict[str, ImageRecord], todo: Plan
) -> BuildRecord:
    """The record of this run, not complete yet: how many of the source's entries it keeps
    and adds, and how many other entries (other sources and shards) the collection holds as
    it starts."""
    new = sum(1 for record in todo.embed if record.id not in stored)
    others = max(0, store.count_at_rest() - len(stored))
    target = len(stored) - len(todo.remove) + new
    return BuildRecord(job.summary.source, target, others, complete=False)


def _finished(
    build: BuildRecord, stored: dict[str, ImageRecord], todo: Plan, summary: BuildSummary
) -> BuildRecord:
    """`build`, complete: new pictures that turned out bad are not in the index."""
    bad = {path for path, _ in summary.bad}
    refused = sum(1 for record in todo.embed if record.id not in stored and record.path in bad)
    return replace(build, target=build.target - refused, complete=True)


def _tune(job: _Job, store: VectorStore[ImageRecord]) -> None:
    """Measure text recall and record the search depth that reaches RECALL_TARGET, when the
    run changed the collection or no depth for this target is recorded yet."""
    target = job.settings.recall_target
    recorded = store.search_effort()
    if not job.summary.changed and recorded is not None and recorded.target == target:
        return
    job.summary.stage = "measuring text recall"
    check = RecallCheck(target=target)
    texts = sample_texts(job.scan.records, store.categories(), check.queries)
    job.summary.recall = tuning = tune(store, job.encoder, texts, check)
    if tuning.effort is not None and not tuning.effort.met:
        log.warning("%s", tuning.describe())
    else:
        log.info("%s", tuning.describe())


def _drop(job: _Job) -> None:
    """`rebuild`: drop the image and caption collections, refusing to empty an index for a
    source that holds no pictures (an unmounted folder) unless `prune` confirms it."""
    info = job.db.info(job.settings.collection)
    check_rebuild(job.scan, info, job.reader.description, job.options.prune)
    job.summary.stage = "dropping collections (--rebuild)"
    drop_collections(job.db, (job.settings.collection, job.captions_name), job.summary)


def _record_categories(
    job: _Job, store: VectorStore[ImageRecord], relabel: list[ImageRecord]
) -> None:
    """Record the categories the pictures hold in the collection (for #hashtags), and
    update the metadata of the stored pictures in `relabel`."""
    names = category_names(job.scan)
    if names:
        job.summary.stage = "recording the categories"
        store.add_categories(names)
    if relabel:
        store.update_metadata(relabel)
        log.info("updated the categories of %s", plural(len(relabel), "stored picture"))


def _remove(job: _Job, store: VectorStore[ImageRecord], ids: Sequence[str]) -> None:
    """Remove entries whose files are gone, their captions first (never left as orphans),
    whether or not this run embeds captions."""
    if not ids:
        return
    summary = job.summary
    summary.stage = "removing entries whose files are gone"

    def captions_removed(n: int) -> None:
        summary.captions_removed += n

    def images_removed(n: int) -> None:
        summary.removed += n

    if job.db.info(job.captions_name) is not None:
        captions = job.open(job.captions_name, CaptionRecord)
        gone = set(ids)
        of_gone = [c.id for c in captions if c.image_id in gone and job.ours(c.split, c.image_id)]
        remove(captions, of_gone, captions_removed)
    remove(store, ids, images_removed)
    log.info("removed %s whose files are gone", plural(summary.removed, "entry", "entries"))


def _embed(job: _Job, store: VectorStore[ImageRecord], records: list[ImageRecord]) -> None:
    """Compile the model if asked (and there is work), then embed and store `records`."""
    options, summary = job.options, job.summary
    if records:
        log.info("%s", embedding_estimate(len(records), job.encoder.device.type))
    if options.compile_model and records:
        summary.stage = "compiling the image tower"
        log.info("compiling the image tower (about 30 s)")
        job.encoder.compile(options.batch_size)
    summary.stage = "embedding images"
    pipeline = Pipeline(
        job.encoder,
        options.batch_size,
        options.workers,
        job.settings.max_image_pixels,
        options.progress,
    )
    started = time.perf_counter()
    try:
        with BatchWriter(store, summary) as writer:
            pipeline.run(records, writer.put, summary)
    finally:
        summary.embed_s = time.perf_counter() - started
    if summary.indexed:
        log.debug("per image: %s", summary.breakdown())  # shown with --verbose


def embedding_estimate(count: int, device: str) -> str:
    """ "40,504 pictures to embed: about 23 min on a 2-core CPU (...)": what a run is about
    to embed, whatever it is (the pictures new or changed, within --limit and --shard), and
    about how long that takes at `CPU_IMAGES_PER_S` (on a GPU, much less)."""
    line = f"{plural(count, 'picture')} to embed: "
    estimate = format_duration(count / CPU_IMAGES_PER_S)
    if device == "cpu":
        return line + f"{estimate} on a 2-core CPU at {CPU_IMAGES_PER_S} pictures/s"
    return line + f"much less than on a 2-core CPU ({estimate} at {CPU_IMAGES_PER_S} pictures/s)"


def report_path(settings: Settings, shard: Shard = EVERYTHING) -> Path:
    """Where the list of pictures that could not be indexed goes: next to the index, one
    list per shard (builders of several shards may share a CHROMA_PATH)."""
    part = "" if shard.whole else f"-shard-{shard.index}-of-{shard.count}"
    return settings.chroma_path / f"{settings.collection}-bad-images{part}.tsv"


def _write_report(settings: Settings, summary: BuildSummary, shard: Shard) -> Path | None:
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
