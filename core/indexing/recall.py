"""Text recall at the end of a build: how deep must a text search go to find what exact
search finds? `tune` measures it on real text queries and records the answer, a
`SearchEffort` (core.store.effort), in the collection's metadata; every search then applies
it (core.search.ranking) and `python -m core status` shows it.

Who uses it: core.indexing.build (at the end of a build), bench/scale.py (the same choice
at 100k to 1M vectors).

Why: a text query sits outside the cloud of picture vectors (the modality gap), where the
HNSW graph built from the pictures finds its true neighbours less often than a picture's
(docs/scaling.md: recall@10 0.88 for text against 0.98 for pictures at 1M vectors with
Chroma's search as configured). Searching deeper wins it back at a cost in latency, so the
depth is chosen by measurement, per collection: the smallest of `DEPTHS` whose recall@10
clears RECALL_TARGET by `MARGIN` standard errors, the deepest when none does (and it says
so).

The queries: a deterministic sample of the index's own captions (the pictures chosen by a
hash of their ids, so a rerun measures the same ones), else its category names as the
hashtag search words them ("a photo of a dog"). Their exact top-10 is computed over every
stored vector, read page by page (a million 512-d vectors are 2 GB: never held at once).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.search.query import HASHTAG_PROMPT
from core.sources.units import format_duration, plural
from core.store.database import VectorStore
from core.store.effort import SearchEffort
from core.store.records import ImageRecord

if TYPE_CHECKING:
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

K = 10
"""Recall@K: a page of results."""
DEPTHS = (0, 256, 384, 512, 768, 1024)
"""Search depths tried, cheapest first: 0 is the store's own search (HNSW ef_search, 128 for
the project's collections); deeper ones ask for that many candidates."""
MARGIN = 3.0
"""Standard errors a depth's measured recall must clear the target by. Text queries differ
much in how hard they are: a few hundred of them measure recall to about ±0.005, and the
index's captions and other text queries of the same collection differed by up to three of
those (0.972 and 0.953 at 100k vectors, docs/scaling.md). A depth that reaches the target
only on the sample's average would miss it for other queries about half the time."""
QUERY_BATCH = 50
"""Text queries sent to the store at once while measuring."""
PAGE = 5000
"""Stored vectors read at once for the exact search (10 MB of 512-d float32)."""


@dataclass(frozen=True)
class RecallCheck:
    """How the end of a build measures text recall."""

    target: float = 0.97
    """RECALL_TARGET: the recall@10 a text search should reach."""
    queries: int = 300
    """Text queries measured at most."""
    min_pictures: int = 2000
    """Smaller collections are not measured: a graph search there is all but exact."""
    min_queries: int = 20
    """Fewer text queries than this measure nothing worth recording."""
    depths: tuple[int, ...] = DEPTHS


@dataclass(frozen=True)
class TextQueries:
    """Real text queries of an index: its captions, else its category names."""

    texts: tuple[str, ...]
    source: str
    """"captions" or "category names" (`core.store.effort.SOURCES`)."""


@dataclass(frozen=True)
class Recall:
    """Recall@10 over a sample of queries: the mean of the queries' shares, and its standard
    error."""

    mean: float
    stderr: float

    @property
    def low(self) -> float:
        """The mean less `MARGIN` standard errors: what the choice compares to the target."""
        return self.mean - MARGIN * self.stderr

    @classmethod
    def of(cls, shares: Sequence[float]) -> Recall:
        values = np.asarray(shares, dtype=np.float64)
        stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        return cls(float(values.mean()) if len(values) else 0.0, stderr)


@dataclass(frozen=True)
class Tuning:
    """What the recall check found: the effort recorded, or why none was."""

    effort: SearchEffort | None
    curve: tuple[tuple[int, Recall], ...] = ()
    """(depth, recall@10) of every depth measured, cheapest first."""
    seconds: float = 0.0
    skipped: str = ""
    """Why nothing was measured (then `effort` is None and the defaults stay)."""

    def describe(self) -> str:
        """One line for the build's output."""
        if self.effort is None:
            return f"text recall not measured: {self.skipped}; search depth left as it was"
        curve = ", ".join(f"{_depth_name(d)} {r.mean:.3f}" for d, r in self.curve)
        return f"{self.effort.describe()} ({curve}; took {format_duration(self.seconds)})"


def sample_texts(
    records: Iterable[ImageRecord], categories: Sequence[str], most: int
) -> TextQueries:
    """Up to `most` captions, one per picture, of the pictures whose ids hash lowest (the
    same pictures whatever the order of `records`); the category names as the hashtag
    search words them when no picture has a caption."""
    chosen = heapq.nsmallest(most, (r for r in records if r.captions), key=lambda r: _hash(r.id))
    if chosen:
        texts = [r.captions[_hash(r.id) % len(r.captions)] for r in chosen]
        return TextQueries(tuple(texts), "captions")
    names = sorted(set(categories))[:most]
    return TextQueries(tuple(HASHTAG_PROMPT.format(name) for name in names), "category names")


def tune(
    store: VectorStore[ImageRecord],
    encoder: DualEncoder,
    queries: TextQueries,
    check: RecallCheck,
) -> Tuning:
    """Measure the text recall@10 of `store` at each depth of `check` (cheapest first, until
    one clears the target), record the chosen `SearchEffort` and return what was found. A
    collection or a sample too small to measure is left as it is (`Tuning.skipped`)."""
    started = time.perf_counter()
    count = store.count_at_rest()
    if count < check.min_pictures:
        return Tuning(None, skipped=f"too few pictures ({count:,}, under {check.min_pictures:,})")
    if len(queries.texts) < check.min_queries:
        found = plural(len(queries.texts), "text query", "text queries")
        return Tuning(None, skipped=f"too few captions or category names ({found})")
    vectors = encoder.embed_texts(list(queries.texts))
    exact = exact_neighbours(store, vectors, K)
    depth, curve = choose(check.depths, lambda d: measure(store, vectors, exact, d), check.target)
    recall = curve[-1][1]
    effort = SearchEffort(
        depth=depth,
        recall=round(recall.mean, 4),
        stderr=round(recall.stderr, 4),
        queries=len(vectors),
        source=queries.source,
        target=check.target,
        met=recall.low >= check.target,
    )
    store.record_search_effort(effort)
    return Tuning(effort, tuple(curve), time.perf_counter() - started)


def choose(
    depths: Sequence[int], recall_at: Callable[[int], Recall], target: float
) -> tuple[int, list[tuple[int, Recall]]]:
    """The first of `depths` whose `recall_at` clears `target` by its margin (the last when
    none does), and the (depth, recall) of every depth measured on the way."""
    curve: list[tuple[int, Recall]] = []
    for depth in depths:
        curve.append((depth, recall_at(depth)))
        if curve[-1][1].low >= target:
            break
    return curve[-1][0], curve


def measure(
    store: VectorStore[ImageRecord], vectors: np.ndarray, exact: list[set[str]], depth: int
) -> Recall:
    """Recall@10 of `store`'s search at `depth` for `vectors`: the share of each one's exact
    top-10 (`exact`) among its results, over the queries."""
    shares = []
    for start in range(0, len(vectors), QUERY_BATCH):
        found = store.query(vectors[start : start + QUERY_BATCH], K, depth=depth)
        for row, truth in zip(found, exact[start : start + QUERY_BATCH], strict=True):
            shares.append(len(truth & {m.record.id for m in row}) / max(1, len(truth)))
    return Recall.of(shares)


def exact_neighbours(store: VectorStore, vectors: np.ndarray, k: int) -> list[set[str]]:
    """The ids of each of `vectors`' `k` nearest stored vectors by brute force (inner product
    of unit vectors), reading the store `PAGE` vectors at a time."""
    best_scores = np.full((len(vectors), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(vectors), 0), dtype=object)
    for ids, page in store.vector_pages(PAGE):
        scores = vectors @ page.T
        top = np.argpartition(-scores, min(k, len(ids)) - 1, axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        best_ids = np.hstack([best_ids, np.asarray(ids, dtype=object)[top]])
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
    return [set(row) for row in best_ids]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _depth_name(depth: int) -> str:
    return "default" if depth == 0 else str(depth)
