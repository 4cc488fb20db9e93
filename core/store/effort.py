"""How deep a text search explores the collection's HNSW graph: `SearchEffort`, measured at
the end of a build (core.indexing.recall) and kept in the collection's metadata, read back
by the search (core.search.service) and by `python -m core status` (without chromadb).

Why text searches need it: CLIP's text and image vectors lie in two cones apart (the
modality gap: Liang et al., "Mind the Gap", NeurIPS 2022), so a text query sits outside the
cloud of picture vectors the graph was built from, and a greedy graph search from there
finds its true neighbours less often than a picture query does: out-of-distribution queries
(RoarGraph, Chen et al., VLDB 2024; big-ann-benchmarks' text-to-image track). Exploring more
candidates wins the recall back (docs/scaling.md has the measured curves).

The depth is asked of Chroma per query (`n_results`; its HNSW search explores
max(ef_search, n_results) candidates), so a new one applies at once to every searcher: a
collection's `ef_search` changed by `modify` is stored, but a server, or an embedded process,
that has the index loaded keeps searching with the old one until it loads the index again.

Read from the store, a record is checked field by field and bounded (the store is not
trusted): anything malformed reads as no record, and the search keeps its defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from core.json_files import json_object

EFFORT_KEY = "search_effort"
"""Collection metadata key of the `SearchEffort` record (JSON)."""
MAX_DEPTH = 4096
"""Deepest search a record may ask for: deeper costs more than exact search at this scale."""
MAX_RECORD = 1024
"""Characters of the record's JSON at most."""
MAX_QUERIES = 100_000
SOURCES = ("captions", "category names")
"""What the measured text queries were: the index's own captions, else its category names."""


@dataclass(frozen=True)
class SearchEffort:
    """The depth a text search asks of the store, and the recall the last build measured
    there against exact search."""

    depth: int
    """Candidates the HNSW search explores for a text query (Chroma's n_results); the best
    of them are the results, the others are dropped. 0: the store's own search (as deep as
    the collection's ef_search)."""
    recall: float
    """Text recall@10 measured at `depth` against exact (brute-force) search."""
    stderr: float
    """The standard error of `recall` over the queries (how far another sample may differ)."""
    queries: int
    """How many text queries measured it."""
    source: str
    """What the queries were: one of `SOURCES`."""
    target: float
    """RECALL_TARGET when it was measured."""
    met: bool
    """Whether `recall` cleared `target` by its margin (core.indexing.recall.MARGIN standard
    errors); False: even the deepest search measured fell short, and `depth` is that one."""

    def to_metadata(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> SearchEffort | None:
        """The record in a collection's metadata, or None (none there, or malformed)."""
        value = metadata.get(EFFORT_KEY)
        data = json_object(value, MAX_RECORD)
        if data is None:
            return None
        depth, queries, met = data.get("depth"), data.get("queries"), data.get("met")
        recall, target, source = data.get("recall"), data.get("target"), data.get("source")
        stderr = data.get("stderr")
        if not (_int_in(depth, 0, MAX_DEPTH) and _int_in(queries, 1, MAX_QUERIES)):
            return None
        if not (_share(recall) and _share(stderr) and _share(target) and target > 0):
            return None
        if type(met) is not bool or source not in SOURCES:
            return None
        return cls(depth, float(recall), float(stderr), queries, source, float(target), met)

    def describe(self) -> str:
        """One line for people: "text recall@10 0.984 ±0.003 at search depth 768 (target
        0.97), measured on 300 captions"."""
        depth = f"search depth {self.depth}" if self.depth else "the default search depth"
        line = (
            f"text recall@10 {self.recall:.3f} ±{self.stderr:.3f} at {depth} "
            f"(target {self.target:g}), measured on {self.queries:,} {self.source}"
        )
        if not self.met:
            line += ": below the target even at the deepest search measured"
        return line


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _share(value: object) -> bool:
    """A finite number in [0, 1] (JSON gives int or float)."""
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= 1
