"""Shards: which pictures one of N index builders takes, so that N builders (on N hosts)
fill one Chroma server together.

For index_builder.py (`--shard I/N`), core.indexing.build (a sharded run scans, embeds, refreshes
and removes only its shard's pictures) and core.sources.url_downloads (a sharded download fetches
only its shard's pictures).

A picture's shard is a stable hash of its record id (a COCO image id, a folder picture's id,
a URL's id) modulo N: blake2b, never Python's `hash()`, which changes from process to
process. So every id falls in exactly one of the N shards, the same one on every host, in
every run and in every Python version, whatever the source.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_FORM = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")


def shard_of(record_id: str, count: int) -> int:
    """The shard (0 .. count-1) that the record `record_id` falls in, of `count` shards."""
    digest = hashlib.blake2b(record_id.encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (counted from 0); `Shard()` is everything, unsharded."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the number of shards must be at least 1, got {self}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self} does not exist: shards count from 0, so I/N needs "
                f"0 <= I < N (here 0 to {self.count - 1})"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"I/N"` → Shard(I, N); `ValueError` with a clear message for anything else."""
        match = _FORM.fullmatch(text)
        if match is None:
            raise ValueError(f"expected I/N, e.g. 0/4 for the first of 4 shards; got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def whole(self) -> bool:
        """True for the unsharded `Shard()`: every picture."""
        return self.count == 1

    def holds(self, record_id: str) -> bool:
        """Whether the record `record_id` is in this shard."""
        return self.whole or shard_of(record_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


EVERYTHING = Shard()
"""The unsharded run: every picture of the source."""
