"""Caption fusion: a text search ranked by the pictures' vectors and by their captions' at
once. Used by `core.search.service.SearchService` for text queries, and by
`core.evaluation`, which measures recall through it.

The index builder (`--with-captions`) stores every caption's vector in a second collection,
`<COLLECTION>_captions`. A text query's vector is matched against both; the two rankings are
merged by reciprocal-rank fusion, so a picture whose caption says what was asked rises even
when its pixels match less well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.errors import IndexEmpty
from core.store.database import Match, VectorStore
from core.store.records import CaptionRecord, ImageRecord

RRF_K = 60
"""Reciprocal-rank fusion: score = 1/(RRF_K + rank_image) + w/(RRF_K + rank_caption)."""
CAPTIONS_PER_IMAGE = 5
"""COCO pictures have about 5 captions: caption neighbours fetched per picture wanted."""


class CaptionFusion:
    """Fuses a text's picture ranking with its captions' ranking (weight `weight`)."""

    def __init__(
        self,
        images: VectorStore[ImageRecord],
        captions: VectorStore[CaptionRecord],
        weight: float,
    ) -> None:
        self.images = images
        self.captions = captions
        """The `<COLLECTION>_captions` collection."""
        self.weight = weight
        """CAPTION_FUSION: how much the captions' ranking weighs beside the pictures'."""

    def fuse(
        self,
        vector: np.ndarray,
        matches: list[Match[ImageRecord]],
        n: int,
        categories: Sequence[str] = (),
        skip_caption: Callable[[CaptionRecord], bool] | None = None,
    ) -> list[Match[ImageRecord]]:
        """`matches` (the nearest pictures of a text's `vector`, best first, `n` deep) fused
        with the captions' ranking (the same vector against the caption vectors, caption hits
        mapped to their pictures); pictures found only by a caption join when they hold every
        one of `categories`. The score of each match stays its picture's cosine.
        `skip_caption` leaves captions out of that ranking (core.evaluation leaves out the
        query's own caption, which would otherwise find its picture trivially)."""
        try:
            found = self.captions.query(vector[None, :], n * CAPTIONS_PER_IMAGE)[0]
        except IndexEmpty:
            return matches
        caption_rank: dict[str, int] = {}
        for match in found:
            if skip_caption is not None and skip_caption(match.record):
                continue
            if len(caption_rank) < n:
                caption_rank.setdefault(match.record.image_id, len(caption_rank) + 1)
        image_rank = {m.record.id: rank for rank, m in enumerate(matches, 1)}
        extra = self._matches_of([i for i in caption_rank if i not in image_rank], vector)
        pool = matches + [m for m in extra if set(categories) <= set(m.record.categories)]

        def fused(match: Match[ImageRecord]) -> tuple[float, float]:
            rank_i, rank_c = image_rank.get(match.record.id), caption_rank.get(match.record.id)
            score = 1 / (RRF_K + rank_i) if rank_i else 0.0
            score += self.weight / (RRF_K + rank_c) if rank_c else 0.0
            return score, match.score

        return sorted(pool, key=fused, reverse=True)

    def _matches_of(self, ids: Sequence[str], vector: np.ndarray) -> list[Match[ImageRecord]]:
        """Stored pictures `ids` as matches of `vector` (cosine scores, vectors attached)."""
        if not ids:
            return []
        vectors = self.images.vectors(ids)
        return [
            Match(r, float(np.dot(vectors[r.id], vector)), vectors[r.id])
            for r in self.images.get(ids)
            if r.id in vectors
        ]
