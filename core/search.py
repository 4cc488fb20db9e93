"""Search: text or image in, ranked hits out. Synchronous and free of Telegram, so the bot,
the terminal CLI and the benchmarks all run the very same code."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.config import Settings
from core.errors import EmptyQuery
from core.images import ImageSource, load_image
from core.indexed_files import IndexedFiles
from core.models.clip import ClipEncoder
from core.records import ImageRecord
from core.store import Database, Match, VectorStore

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
"""Far more than CLIP's 77 tokens; longer text is cut before tokenising, not refused."""
MISSING_FILE_SLACK = 5
"""Extra neighbours fetched so hits whose file vanished (or is refused) can be skipped without
a short list."""


@dataclass(frozen=True)
class Hit:
    id: str
    path: str
    score: float
    """Cosine similarity, 1 - cosine distance."""
    captions: tuple[str, ...]
    file_size: int = 0
    mtime_ns: int = 0
    """Size and modification time of the file when indexed: with the id, they name this
    version of the picture (a changed file is a new picture to Telegram's file_id cache)."""

    @property
    def version(self) -> str:
        """This version of the picture: "<id>:<size>:<mtime_ns>" (a changed file gets a new
        one, so nothing cached for the old file is reused)."""
        return f"{self.id}:{self.file_size}:{self.mtime_ns}"

    @property
    def caption(self) -> str:
        """The first caption, or "" when the picture has none."""
        return self.captions[0] if self.captions else ""


@dataclass(frozen=True)
class Query:
    """What a person asked for: words (with `-term`, `a + b` and `#category`), a picture of
    theirs (optionally changed by the words), or an indexed picture to find more like."""

    text: str = ""
    picture: bytes | None = None
    """A user's picture, undecoded (core decodes it safely)."""
    like_id: str | None = None
    """An indexed picture's id: search with its stored vector (no re-encoding)."""
    nearest_anyway: bool = False
    """Ignore MIN_SCORE (the user pressed "show the nearest anyway")."""


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

    def to_json(self) -> str:
        return json.dumps(
            {
                "vector": [round(v, 6) for v in self.vector],
                "categories": list(self.categories),
                "reading": self.reading,
                "fuse_captions": self.fuse_captions,
                "min_score": self.min_score,
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
        )


@dataclass(frozen=True)
class SearchPage:
    """One page of results of a prepared query."""

    hits: list[Hit]
    offset: int
    """How many results came before this page (0 for the first)."""
    more: bool
    """Whether a next page has results."""
    reading: str
    """How the query was read (see `PreparedQuery.reading`)."""
    total: int
    """Pictures in the collection."""
    below_min_score: int = 0
    """Results dropped by MIN_SCORE on this page (all of them when `hits` is empty)."""


class SearchService:
    """Finds the indexed pictures nearest to a text or a picture."""

    def __init__(
        self,
        encoder: ClipEncoder,
        store: VectorStore[ImageRecord],
        *,
        max_image_pixels: int = 40_000_000,
        files: IndexedFiles | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.max_image_pixels = max_image_pixels
        self.files = files or IndexedFiles(store.roots)
        """Hits whose file may not be read (outside the indexed folders, not a regular file,
        too big, gone) are never returned."""

    @classmethod
    def open(cls, settings: Settings, encoder: ClipEncoder | None = None) -> SearchService:
        """Load the encoder and open the configured collection (raises `IndexEmpty`,
        `ModelMismatch`, `ModelUnavailable`, `StoreUnavailable`)."""
        encoder = encoder or ClipEncoder.from_settings(settings)
        encoder.load()
        store = Database(settings).open(
            settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim
        )
        return cls(encoder, store, max_image_pixels=settings.max_image_pixels)

    def by_text(self, query: str, k: int) -> list[Hit]:
        """The `k` pictures that best match `query`."""
        return self.by_texts([query], k)[0]

    def by_texts(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Several text searches in one encoder call (micro-batching)."""
        cleaned = [clean_query(q) for q in queries]
        return self._nearest(self.encoder.embed_texts(cleaned), k)

    def by_image(self, image: Image.Image, k: int) -> list[Hit]:
        """The `k` pictures most like `image` (an RGB picture)."""
        return self._nearest(self.encoder.embed_images([image]), k)[0]

    def by_image_file(self, source: ImageSource, k: int) -> list[Hit]:
        """Decode `source` safely (raises `BadImage`), then search by it."""
        image = load_image(
            source, min_side=self.encoder.input_size, max_pixels=self.max_image_pixels
        )
        return self.by_image(image, k)

    def _nearest(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        results = self.store.query(vectors, k + MISSING_FILE_SLACK)
        return [self._present(matches)[:k] for matches in results]

    def _present(self, matches: list[Match[ImageRecord]]) -> list[Hit]:
        hits = []
        for match in matches:
            record = match.record
            if self.files.allowed(record.id, record.path):
                hits.append(
                    Hit(
                        record.id,
                        record.path,
                        match.score,
                        record.captions,
                        record.file_size,
                        record.mtime_ns,
                    )
                )
        return hits


def clean_query(query: str) -> str:
    """Trim a search text; raises `EmptyQuery` when nothing is left."""
    text = " ".join(query.split())
    if not text:
        raise EmptyQuery("nothing to search for: describe a picture in a few words")
    return text[:MAX_QUERY_CHARS]
