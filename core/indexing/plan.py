"""What a build will do, decided before anything changes: which pictures to embed (new or
changed), which entries to remove (their file is gone), which to keep or relabel, which
captions to embed or remove, and whether a removal is safe without the operator's `prune`.

Who uses it: core.indexing.build, for each run. Pure: it reads a scan and what the store
holds of this run's entries, and never writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from core.errors import UnsafeRemoval
from core.sources.scan import Scan
from core.store.collection_info import CollectionInfo
from core.store.records import CaptionRecord, ImageRecord

MAX_UNCONFIRMED_REMOVAL = 0.10
"""A refresh may remove at most this share of a source's stored entries without `prune`."""


@dataclass(frozen=True)
class Plan:
    """The pictures of one run, by what happens to them."""

    embed: list[ImageRecord]
    """New pictures, and stored ones whose path, size or mtime changed."""
    remove: list[str]
    """Ids of stored entries whose picture the scan no longer finds."""
    relabel: list[ImageRecord]
    """Stored pictures whose categories changed but whose file did not (an instances file
    added later): their metadata is updated, nothing is re-embedded."""
    unchanged: int
    beyond_limit: int


@dataclass(frozen=True)
class CaptionPlan:
    """The captions of one run: those to embed (new or changed) and the ids to remove."""

    embed: list[CaptionRecord]
    remove: list[str]


def plan(scan: Scan, stored: dict[str, ImageRecord], limit: int | None) -> Plan:
    """Decide what to embed, remove and relabel, given the scan and the stored entries of
    this run (by id); `limit` counts within the scan."""
    present = {r.id for r in scan.records}
    selection = _selected(scan, limit)
    embed = [r for r in selection if _file_changed(stored.get(r.id), r)]
    remove = [id_ for id_ in stored if id_ not in present]
    to_embed = {r.id for r in embed}
    relabel = [
        replace(r, width=stored[r.id].width or r.width)
        for r in scan.records
        if r.id in stored and r.id not in to_embed and stored[r.id].categories != r.categories
    ]
    unchanged = len(selection) - len(embed)
    return Plan(embed, remove, relabel, unchanged, len(scan.records) - len(selection))


def plan_captions(scan: Scan, stored: dict[str, str], limit: int | None) -> CaptionPlan:
    """Decide which captions to embed (every caption of the selected pictures not stored
    with the same text) and which to remove (those of pictures gone), given the stored
    captions of this run (id → text)."""
    present = {c.id for c in _captions_of(scan.records)}
    embed = [c for c in _captions_of(_selected(scan, limit)) if stored.get(c.id) != c.caption]
    return CaptionPlan(embed, [id_ for id_ in stored if id_ not in present])


def category_names(scan: Scan) -> set[str]:
    """The categories the scanned pictures hold (for #hashtags)."""
    return {name for record in scan.records for name in record.categories}


def check_removal(
    remove: Sequence[str], stored: dict[str, ImageRecord], scan: Scan, source: str, prune: bool
) -> None:
    """Raise `UnsafeRemoval` when removing `remove` from the `stored` entries of `source`
    needs the operator's `prune`: all of them, or more than `MAX_UNCONFIRMED_REMOVAL`."""
    n, of = len(remove), len(stored)
    if not n or prune or (n < of and n <= of * MAX_UNCONFIRMED_REMOVAL):
        return
    on_disk = {r.path for r in scan.records}
    rekeyed = sum(1 for id_ in remove if stored[id_].path in on_disk)
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


def check_rebuild(scan: Scan, info: CollectionInfo | None, source: str, prune: bool) -> None:
    """Raise `UnsafeRemoval` when `rebuild` would empty the collection `info` describes for a
    `source` that holds no pictures (an unmounted folder) and `prune` does not confirm it."""
    if info and info.count and not scan.records and not prune:
        raise UnsafeRemoval(
            f"{source} holds no pictures, and --rebuild would drop collection "
            f"{info.name!r} with its {info.count:,} entries: is the folder mounted? Nothing was "
            "changed; rerun with --prune to confirm"
        )


def _selected(scan: Scan, limit: int | None) -> list[ImageRecord]:
    return scan.records[:limit] if limit is not None else scan.records


def _file_changed(stored: ImageRecord | None, record: ImageRecord) -> bool:
    """Whether `record`'s file is not the one stored (none stored, or another path, size or
    mtime)."""
    if stored is None:
        return True
    return (stored.path, stored.file_size, stored.mtime_ns) != (
        record.path,
        record.file_size,
        record.mtime_ns,
    )


def _captions_of(records: Iterable[ImageRecord]) -> Iterator[CaptionRecord]:
    for record in records:
        for n, text in enumerate(record.captions):
            yield CaptionRecord(f"{record.id}:{n}", record.id, text, record.split)
