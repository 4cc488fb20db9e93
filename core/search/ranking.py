"""A prepared query's results, ranked deep enough for one page. Used by
`core.search.service.SearchService.page` (the bot's pages, inline mode's pages and the CLI
alike, so that they all show the same results in the same order).

The store's nearest pictures (fused with the captions' ranking for a text), only files the
host may send, near-duplicates collapsed, the picture a Similar search started from left out,
MIN_SCORE applied. Each of these steps can shorten the list the store gave, so the ranking
fetches more neighbours (twice as many each time) until it holds what the page needs or the
results really end: the store has no more pictures of the query's categories, or the
farthest one fetched already scores below MIN_SCORE (every picture beyond it scores lower).

A text query searches as deep as the collection's recorded `SearchEffort` says (measured at
the end of its build, core.indexing.recall): text vectors lie outside the cloud of picture
vectors, where the store's default graph search misses more of their true neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.search.fusion import CaptionFusion
from core.search.prepared import PreparedQuery
from core.search.sendable_files import SendableFiles
from core.store.database import Match, VectorStore
from core.store.records import ImageRecord

FIRST_FETCH = 16
"""Neighbours fetched first; then 32, 64, ...: the depth depends only on how many results are
wanted, so that two pages ending at the same rank (a More page, an inline page) see the same
ranking."""
MAX_FETCH = 1024
"""Neighbours fetched at most for one page: about five per result at the deepest page
(`service.MAX_RESULTS`), room for many near-duplicates and refused files."""
EFFORT_MAX_AGE_S = 60.0
"""How old the collection's search effort may be that a text search applies: a build that
records a new one is followed within a minute, without a restart."""


@dataclass(frozen=True)
class Ranking:
    """The results of a query, best first, as deep as a page needed them."""

    kept: list[Match[ImageRecord]]
    below_floor: int
    """Results fetched but dropped by MIN_SCORE."""
    complete: bool
    """Every result the query has is in `kept` (the ranking reached their end)."""


@dataclass(frozen=True)
class _Fetched:
    """One fetch of `n` neighbours, filtered."""

    matches: list[Match[ImageRecord]]
    ended: bool
    """No picture beyond these can be a result: the store gave fewer than asked, or the
    farthest one fetched scores below the floor."""


class Ranker:
    """Ranks a prepared query's results: fetch, fuse, filter, collapse (see the module)."""

    def __init__(
        self,
        store: VectorStore[ImageRecord],
        files: SendableFiles,
        fusion: CaptionFusion | None,
        duplicate_cosine: float | None,
    ) -> None:
        self.store = store
        self.files = files
        self.fusion = fusion
        self.duplicate_cosine = duplicate_cosine
        self._text_depth: tuple[int, float] | None = None
        """The last search depth of text queries read and when (`time.monotonic`)."""

    def text_depth(self) -> int:
        """How deep a text query searches: the collection's recorded `SearchEffort` (0, the
        store's own search, when none is or it is malformed), read at most every
        `EFFORT_MAX_AGE_S`."""
        now = time.monotonic()
        known = self._text_depth
        if known is None or now - known[1] > EFFORT_MAX_AGE_S:
            effort = self.store.search_effort()
            known = self._text_depth = (effort.depth if effort else 0, now)
        return known[0]

    def rank(self, prepared: PreparedQuery, want: int, floor: float | None, size: int) -> Ranking:
        """At least `want` results of `prepared` scoring `floor` or more (None: any), unless
        it has fewer; `size` is the collection's (no fetch asks for more)."""
        vector = np.asarray(prepared.vector, dtype=np.float32)
        allowed: dict[str, bool] = {}
        n = fetch_size(want)
        while True:
            n = min(n, MAX_FETCH, max(size, 1))
            fetched = self._fetch(prepared, vector, n, floor, allowed)
            kept = [m for m in fetched.matches if floor is None or m.score >= floor]
            ended = fetched.ended or n >= size
            if len(kept) >= want or ended or n >= MAX_FETCH:
                return Ranking(kept, len(fetched.matches) - len(kept), ended)
            n *= 2

    def _fetch(
        self,
        prepared: PreparedQuery,
        vector: np.ndarray,
        n: int,
        floor: float | None,
        allowed: dict[str, bool],
    ) -> _Fetched:
        """The nearest `n` pictures of `vector` in the categories, fused with the captions'
        ranking, whose files may be sent (`allowed` remembers the checks across fetches),
        near-duplicates and the excluded pictures left out."""
        contains = {"categories": list(prepared.categories)} if prepared.categories else None
        depth = self.text_depth() if prepared.fuse_captions else 0
        raw = self.store.query(
            vector[None, :], n, contains=contains, with_vectors=True, depth=depth
        )[0]
        matches = raw
        if prepared.fuse_captions and self.fusion is not None:
            matches = self.fusion.fuse(vector, raw, n, prepared.categories)
        for match in matches:
            if match.record.id not in allowed:
                allowed[match.record.id] = self.files.allowed(match.record.id, match.record.path)
        matches = [m for m in matches if allowed[m.record.id]]
        if self.duplicate_cosine is not None:
            matches = collapsed(matches, self.duplicate_cosine)
        excluded = set(prepared.exclude)
        matches = [m for m in matches if m.record.id not in excluded]
        farthest = min((m.score for m in raw), default=-1.0)
        return _Fetched(matches, len(raw) < n or (floor is not None and farthest < floor))


def fetch_size(want: int) -> int:
    """The first fetch for `want` results: `FIRST_FETCH` doubled until it leaves a few
    neighbours to spare for a near-duplicate or a refused file."""
    n = FIRST_FETCH
    while n < want + 5 and n < MAX_FETCH:
        n *= 2
    return n


def collapsed(matches: list[Match[ImageRecord]], threshold: float) -> list[Match[ImageRecord]]:
    """`matches` without those at cosine >= `threshold` to a better-ranked one kept."""
    kept: list[Match[ImageRecord]] = []
    seen: np.ndarray | None = None
    count = 0
    for match in matches:
        if match.vector is not None:
            vector = match.vector / max(float(np.linalg.norm(match.vector)), 1e-12)
            if seen is None:
                seen = np.empty((len(matches), vector.shape[0]), dtype=np.float32)
            if count and float(np.max(seen[:count] @ vector)) >= threshold:
                continue
            seen[count] = vector
            count += 1
        kept.append(match)
    return kept
