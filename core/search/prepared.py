"""A query ready to run and to keep (`PreparedQuery`): made by `SearchService.prepare`, paged
by `core.search.ranking`, saved behind the bot's buttons as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PreparedQuery:
    """A query ready to run and to keep: its normalised vector and filters. Small and
    JSON-serialisable, so a search can be paged (More) long after it was made."""

    vector: tuple[float, ...]
    categories: tuple[str, ...] = ()
    """COCO categories every result must hold (from #hashtags)."""
    reading: str = ""
    """How the query was read, for people: "a dog on a beach −people · #dog"."""
    fuse_captions: bool = False
    """A text query: its ranking is fused with the captions collection's (when it exists)."""
    min_score: float | None = None
    """Results below this cosine are dropped (MIN_SCORE; None = keep all)."""
    exclude: tuple[str, ...] = ()
    """Pictures never returned: the one a search for more like it started from."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "vector": [round(v, 6) for v in self.vector],
                "categories": list(self.categories),
                "reading": self.reading,
                "fuse_captions": self.fuse_captions,
                "min_score": self.min_score,
                "exclude": list(self.exclude),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PreparedQuery:
        data = json.loads(text)
        return cls(
            vector=tuple(float(v) for v in data["vector"]),
            categories=tuple(str(c) for c in data.get("categories", ())),
            reading=str(data.get("reading", "")),
            fuse_captions=bool(data.get("fuse_captions", False)),
            min_score=data.get("min_score"),
            exclude=tuple(str(i) for i in data.get("exclude", ())),
        )
