"""Text search at scale (issue 24): recall@10 and latency of top-10 searches against the search
effort, for image-like and text-like query vectors, in bench/scale.py's collection at each
size and in each mode. Text-like queries sit outside the cloud of picture vectors (the
modality gap, `bench.query_latency.text_like`), where the HNSW graph finds fewer of their
true neighbours (core.store.effort).

- the search depth per query (`VectorStore.query(depth=...)`, what the project's text
  searches apply: Chroma's HNSW explores max(ef_search, depth) candidates and keeps the best
  10), 0 (the store's own: ef_search 128), 256, 512 and 1024, one query at a time with
  metadata, the depths interleaved query by query;
- the collection's ef_search (64 ... 1024), embedded only: Chroma applies a changed
  ef_search only when it loads the index again (the store is reopened for each value);
- the choice the end of a build makes (`core.indexing.recall.tune`, the project's own code)
  on text-like vectors of 300 indexed pictures (their "captions") against RECALL_TARGET,
  and what the chosen depth gives the held-out text-like queries.

`scale.py` runs these; this module computes and renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.common import Timings
from bench.query_latency import recall, text_like
from bench.report import table

TARGET = 0.97
"""RECALL_TARGET's default: what the build-end choice aims at here."""
EF_SEARCH = (64, 128, 256, 512, 1024)
"""The collection's ef_search values swept (embedded)."""
CAPTIONS = 300
"""Indexed pictures whose text-like "captions" the build-end choice measures."""


@dataclass(frozen=True)
class Effort:
    """Recall@10 and query times at one search effort."""

    value: int
    """The search depth (0: the store's own), or the collection's ef_search."""
    recall_image: float
    recall_text: float
    image_query: Timings
    text_query: Timings


@dataclass(frozen=True)
class Tuned:
    """The build-end choice at one size (`core.indexing.recall.tune`, embedded)."""

    vectors: int
    depth: int
    recall: float
    """Recall@10 of the "captions" at `depth`."""
    met: bool
    curve: tuple[tuple[int, float], ...]
    """(depth, recall of the captions) of every depth it measured."""
    seconds: float
    """What the step cost: reading every vector for the exact search, then the searches."""


def depths() -> tuple[int, ...]:
    from core.indexing.recall import DEPTHS

    return DEPTHS


def efforts(
    found: dict[int, dict[str, tuple[list[list[str]], list[float]]]],
    exact: dict[str, np.ndarray],
) -> tuple[Effort, ...]:
    """One `Effort` per value of `found` ({value: {kind: (ids of each query, seconds)}})."""
    return tuple(
        Effort(
            value=value,
            recall_image=round(recall(kinds["image"][0], exact["image"]), 4),
            recall_text=round(recall(kinds["text"][0], exact["text"]), 4),
            image_query=Timings.of(kinds["image"][1]),
            text_query=Timings.of(kinds["text"][1]),
        )
        for value, kinds in found.items()
    )


def captions(base: np.ndarray, size: int) -> np.ndarray:
    """Text-like vectors of `CAPTIONS` of the first `size` pictures (a fixed sample): what
    the index's own captions are to the build-end choice."""
    rows = np.sort(np.random.default_rng(7).choice(size, CAPTIONS, replace=False))
    return text_like(np.asarray(base[rows]))


def tuned_of(size: int, tuning) -> Tuned:
    """A `core.indexing.recall.Tuning` as measured at `size`."""
    effort = tuning.effort
    return Tuned(
        vectors=size,
        depth=effort.depth,
        recall=effort.recall,
        met=effort.met,
        curve=tuple((d, round(r.mean, 4)) for d, r in tuning.curve),
        seconds=round(tuning.seconds, 1),
    )


def at(sweep: tuple[Effort, ...], value: int) -> Effort:
    """The point of `sweep` at `value`."""
    return next(e for e in sweep if e.value == value)


def effort_tables(points: list, tuned: list[Tuned]) -> list[str]:
    """The depth sweep (both modes), the ef_search sweep (embedded) and the choice."""
    sweep = table(
        "Search depth per query (text searches apply it): recall@10 image / text-like, "
        "p50 ms image / text-like, top-10 with metadata",
        ["vectors", "mode", *[_depth_name(d) for d in depths()]],
        [
            [f"{p.vectors:,}", p.mode, *[_cell(e) for e in p.depths]]
            for p in points
            if p.depths
        ],
    )
    ef = table(
        "The collection's ef_search instead (embedded; applies once the index is loaded again): "
        "recall@10 image / text-like, p50 ms image / text-like",
        ["vectors", *[f"ef {v}" for v in EF_SEARCH]],
        [
            [f"{p.vectors:,}", *[_cell(e) for e in p.ef_search]]
            for p in points
            if p.ef_search
        ],
    )
    chosen = table(
        f"Chosen at the end of the build (RECALL_TARGET {TARGET}, measured on {CAPTIONS} "
        "text-like captions of indexed pictures), and what it gives the held-out text-like "
        "queries",
        [
            "vectors",
            "depth chosen",
            "captions' recall by depth",
            "step s",
            "text-like recall@10 embedded / server",
            "text-like p50 ms embedded / server",
        ],
        [_chosen_row(t, points) for t in tuned],
    )
    return [sweep, ef, chosen]


def _chosen_row(tuned: Tuned, points: list) -> list[object]:
    by_mode = {p.mode: at(p.depths, tuned.depth) for p in points if p.vectors == tuned.vectors}
    modes = [m for m in ("embedded", "server") if m in by_mode]
    return [
        f"{tuned.vectors:,}",
        _depth_name(tuned.depth) + ("" if tuned.met else " (target not met)"),
        ", ".join(f"{_depth_name(d)} {r:.3f}" for d, r in tuned.curve),
        tuned.seconds,
        " / ".join(f"{by_mode[m].recall_text:.3f}" for m in modes),
        " / ".join(f"{by_mode[m].text_query.p50_ms}" for m in modes),
    ]


def _cell(effort: Effort) -> str:
    return (
        f"{effort.recall_image:.3f} / {effort.recall_text:.3f}, "
        f"{effort.image_query.p50_ms} / {effort.text_query.p50_ms}"
    )


def _depth_name(depth: int) -> str:
    return "default (ef 128)" if depth == 0 else f"depth {depth}"
