"""What every reader gives: a `Scan` of the pictures it found, and the `Reader` protocol the
index builder reads any source through (COCO, a folder, a downloaded URL list).

A reader scans metadata only (JSON and file stats, never pixels). Files listed but missing
on disk are collected in `absent`, not fatal. Every reader names its `roots`: the real paths
of the folders its pictures lie in, which the builder records in this host's roots file
(`core.search.sendable_files`), so the bot on this host may send them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from core.store.records import ImageRecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass
class Scan:
    """What a reader found: records of files that exist, and records listed but missing."""

    records: list[ImageRecord] = field(default_factory=list)
    absent: list[ImageRecord] = field(default_factory=list)
    """Records whose file is missing on disk."""

    @property
    def missing(self) -> list[str]:
        """The paths of the records whose file is missing on disk."""
        return [record.path for record in self.absent]

    def add(self, record: ImageRecord) -> None:
        """Add `record` with its file's size and mtime, or to `absent` when there is none."""
        try:
            stat = os.stat(record.path)
        except OSError:
            self.absent.append(record)
            return
        self.records.append(replace(record, file_size=stat.st_size, mtime_ns=stat.st_mtime_ns))

    def only(self, keep: Callable[[str], bool]) -> Scan:
        """The records (present and absent) whose id `keep` accepts, in the same order."""
        return Scan([r for r in self.records if keep(r.id)], [r for r in self.absent if keep(r.id)])


class Reader(Protocol):
    """A source of pictures. `owns` tells which stored records belong to this source, so a
    refresh removes only its own vanished entries, never another split's or folder's."""

    description: str

    @property
    def roots(self) -> tuple[str, ...]:
        """Real paths of the folders the pictures lie in (what the bot may send from)."""
        ...

    def scan(self) -> Scan: ...

    def owns(self, split: str) -> bool: ...
