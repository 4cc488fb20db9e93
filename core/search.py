"""Search: text or image in, ranked hits out. Synchronous and free of Telegram, so the bot,
the terminal CLI and the benchmarks all run the very same code."""

from __future__ import annotations

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
