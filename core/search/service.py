"""Search: text or image in, ranked hits out. Synchronous and free of Telegram, so the bot,
the terminal CLI (`python -m core search`) and the benchmarks all run the very same path:
`prepare` a query, then `page` through its results."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.config import Settings
from core.errors import EmptyQuery, SearchBotError, UnknownPicture
from core.images import ImageSource, load_image
from core.search.fusion import CaptionFusion
from core.search.query import (
    HASHTAG_PROMPT,
    MINUS_WEIGHT,
    PLUS_WEIGHT,
    ParsedQuery,
    combine,
    parse_query,
    resolve_categories,
)
from core.search.sendable_files import HostRoots, SendableFiles
from core.store.database import Database, Match, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
"""Far more than CLIP's 77 tokens; longer text is cut before tokenising, not refused."""
MISSING_FILE_SLACK = 5
"""Extra neighbours fetched so hits whose file vanished (or is refused) can be skipped without
a short list."""
TOTAL_MAX_AGE_S = 30.0
"""How old the collection's size may be that a search checks (not empty) and shows under
results ("1–5 of 123,287"): counting grows with the collection, and for a large one costs
more than the search itself (docs/benchmarks.md). An empty collection is always counted
afresh."""
MAX_RESULTS = 200
"""Paging stops here: results beyond the 200th are never shown (`more` is False)."""


@dataclass(frozen=True)
class Hit:
    id: str
    path: str
    score: float
    """Cosine similarity, 1 - cosine distance."""
    captions: tuple[str, ...]
    file_size: int = 0
    mtime_ns: int = 0
    """Size and modification time of the file when it was indexed."""

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
    categories: tuple[str, ...] = ()
    """Categories every result must hold, as if written as #hashtags (the CLI's --where)."""


@dataclass(frozen=True)
class SearchOptions:
    """The settings a search reads, apart from the model and the store."""

    max_image_pixels: int = 40_000_000
    """A user's picture with more pixels is refused (MAX_IMAGE_PIXELS)."""
    caption_fusion: float = 1.0
    """Weight of the captions' ranking in text searches (CAPTION_FUSION; 0 = off)."""
    min_score: float | None = None
    """Results below this cosine are dropped (MIN_SCORE; None = keep all)."""
    duplicate_cosine: float | None = None
    """A hit this similar to a better-ranked one is left out (DUPLICATE_COSINE; None = keep
    near-duplicates)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchOptions:
        return cls(
            max_image_pixels=settings.max_image_pixels,
            caption_fusion=settings.caption_fusion,
            min_score=settings.min_score,
            duplicate_cosine=settings.duplicate_cosine,
        )


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


@dataclass
class _Draft:
    """A query read and checked, waiting for its text terms to be embedded."""

    parsed: ParsedQuery
    categories: tuple[str, ...]
    base: np.ndarray | None = None
    """The picture's vector (a user's photo, or an indexed picture's stored one)."""
    base_reading: str = ""
    texts: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


class SearchService:
    """Finds the indexed pictures nearest to a text, a picture, or both."""

    def __init__(
        self,
        encoder: DualEncoder,
        store: VectorStore[ImageRecord],
        *,
        files: SendableFiles,
        captions: VectorStore[CaptionRecord] | None = None,
        options: SearchOptions | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.files = files
        """Hits whose file may not be read (outside the folders the host serves, not a
        regular file, too big, gone) are never returned."""
        self.options = options or SearchOptions()
        self.fusion = (
            CaptionFusion(store, captions, self.options.caption_fusion)
            if captions is not None and self.options.caption_fusion > 0
            else None
        )
        """Fuses text searches with the `<COLLECTION>_captions` collection; None without one
        (or with CAPTION_FUSION=0)."""

    @classmethod
    def open(cls, settings: Settings, encoder: DualEncoder | None = None) -> SearchService:
        """Load the encoder and open the configured collection, and its captions collection
        when there is one (raises `IndexEmpty`, `ModelMismatch`, `ModelUnavailable`,
        `StoreUnavailable`)."""
        from core.models.encoder import DualEncoder  # here: it imports torch

        encoder = encoder or DualEncoder.from_settings(settings)
        encoder.load()
        db = Database(settings)
        store = db.open(
            settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim
        )
        captions_name = f"{settings.collection}_captions"
        captions = None
        if settings.caption_fusion > 0 and db.info(captions_name) is not None:
            captions = db.open(
                captions_name, CaptionRecord, model=settings.clip_model, dim=encoder.dim
            )
        return cls(
            encoder,
            store,
            files=SendableFiles(HostRoots(settings)),
            captions=captions,
            options=SearchOptions.from_settings(settings),
        )

    def prepare(self, query: Query) -> PreparedQuery:
        """Read and embed `query`. Raises `EmptyQuery`, `BadImage` (its picture),
        `UnknownPicture` (its like_id), `UnknownCategory`, `NoCategories`, `IndexEmpty`."""
        draft = self._draft(query)
        self.store.check_not_empty(max_age_s=TOTAL_MAX_AGE_S)
        vectors = self.encoder.embed_texts(draft.texts) if draft.texts else np.zeros((0, 1))
        return self._finish(draft, dict(zip(draft.texts, vectors, strict=True)))

    def prepare_texts(
        self, texts: Sequence[str], *, return_errors: bool = False
    ) -> list[PreparedQuery | SearchBotError]:
        """Several text queries, with ONE encoder call for all their terms (micro-batching).

        A bad text raises its error (`EmptyQuery`, `UnknownCategory`, `NoCategories`) before
        anything is embedded; with `return_errors`, its place in the list holds the error
        instead and the others are prepared. Raises `IndexEmpty` for the whole batch."""
        drafts: list[_Draft | SearchBotError] = []
        for text in texts:
            try:
                drafts.append(self._draft(Query(text=text)))
            except SearchBotError as err:
                if not return_errors:
                    raise
                drafts.append(err)
        self.store.check_not_empty(max_age_s=TOTAL_MAX_AGE_S)
        wanted = list(dict.fromkeys(t for d in drafts if isinstance(d, _Draft) for t in d.texts))
        vectors = dict(zip(wanted, self.encoder.embed_texts(wanted), strict=True)) if wanted else {}
        return [d if isinstance(d, SearchBotError) else self._finish(d, vectors) for d in drafts]

    def page(
        self, prepared: PreparedQuery, k: int, offset: int = 0, *, nearest_anyway: bool = False
    ) -> SearchPage:
        """Results offset+1 .. offset+k of `prepared`: near-duplicates collapsed, only
        pictures of its categories, below MIN_SCORE dropped (unless `nearest_anyway`), text
        queries fused with the captions' ranking. Paging re-queries the store, up to
        `MAX_RESULTS` deep."""
        if k < 1 or offset < 0:
            raise ValueError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        total = self.store.count(max_age_s=TOTAL_MAX_AGE_S)
        end = min(offset + k, MAX_RESULTS)
        if offset >= end:
            return SearchPage([], offset, False, prepared.reading, total)
        vector = np.asarray(prepared.vector, dtype=np.float32)
        ranked = self._ranked(prepared, vector, end + k + MISSING_FILE_SLACK)
        floor = None if nearest_anyway else prepared.min_score
        kept = [m for m in ranked if floor is None or m.score >= floor]
        hits = [_hit(m.record, m.score) for m in kept[offset:end]]
        more = len(kept) > end and end < MAX_RESULTS
        return SearchPage(hits, offset, more, prepared.reading, total, len(ranked) - len(kept))

    # --- helpers --------------------------------------------------------------------------

    def _load(self, source: ImageSource) -> Image.Image:
        return load_image(
            source, min_side=self.encoder.input_size, max_pixels=self.options.max_image_pixels
        )

    def _draft(self, query: Query) -> _Draft:
        """Read `query`, check its hashtags and emptiness, embed its picture (not its words)."""
        parsed = parse_query(query.text[:MAX_QUERY_CHARS])
        tags = parsed.hashtags + tuple(c.strip().lower() for c in query.categories)
        categories = resolve_categories(tags, self.store.categories() if tags else ())
        draft = _Draft(parsed, categories)
        if query.like_id is not None:
            stored = self.store.vectors([query.like_id]).get(query.like_id)
            if stored is None:
                raise UnknownPicture(
                    f"picture {query.like_id} is not in the index (any more): search again"
                )
            draft.base, draft.base_reading = stored, f"like picture {query.like_id}"
        elif query.picture is not None:
            draft.base = self.encoder.embed_images([self._load(query.picture)])[0]
            draft.base_reading = "your photo"
        draft.texts = list(parsed.positives) + list(parsed.negatives)
        draft.weights = [PLUS_WEIGHT] * len(parsed.positives) + [MINUS_WEIGHT] * len(
            parsed.negatives
        )
        if draft.base is None and not parsed.positives:
            if not categories:
                raise EmptyQuery(empty_query_message(parsed))
            draft.texts = [HASHTAG_PROMPT.format(c) for c in categories] + draft.texts
            draft.weights = [PLUS_WEIGHT] * len(categories) + draft.weights
        return draft

    def _finish(self, draft: _Draft, text_vectors: dict[str, np.ndarray]) -> PreparedQuery:
        """Combine the draft's picture and embedded terms into a `PreparedQuery`."""
        vectors = [text_vectors[t] for t in draft.texts]
        weights = list(draft.weights)
        if draft.base is not None:
            vectors.insert(0, draft.base)
            weights.insert(0, PLUS_WEIGHT)
        vector = combine(vectors, weights)
        return PreparedQuery(
            vector=tuple(float(v) for v in vector),
            categories=draft.categories,
            reading=draft.parsed.reading(draft.base_reading, draft.categories),
            fuse_captions=draft.base is None,
            min_score=self.options.min_score,
        )

    def _ranked(
        self, prepared: PreparedQuery, vector: np.ndarray, n: int
    ) -> list[Match[ImageRecord]]:
        """The nearest `n` pictures of `vector` in the categories, fused with the captions'
        ranking, whose files may be sent, near-duplicates left out."""
        contains = {"categories": list(prepared.categories)} if prepared.categories else None
        matches = self.store.query(vector[None, :], n, contains=contains, with_vectors=True)[0]
        if prepared.fuse_captions and self.fusion is not None:
            matches = self.fusion.fuse(vector, matches, n, prepared.categories)
        allowed = [m for m in matches if self.files.allowed(m.record.id, m.record.path)]
        if self.options.duplicate_cosine is None:
            return allowed
        return _collapsed(allowed, self.options.duplicate_cosine)


def _collapsed(matches: list[Match[ImageRecord]], threshold: float) -> list[Match[ImageRecord]]:
    """`matches` without those at cosine >= `threshold` to a better-ranked one."""
    kept: list[Match[ImageRecord]] = []
    seen: list[np.ndarray] = []
    for match in matches:
        if match.vector is not None:
            vector = match.vector / max(float(np.linalg.norm(match.vector)), 1e-12)
            if any(float(np.dot(vector, other)) >= threshold for other in seen):
                continue
            seen.append(vector)
        kept.append(match)
    return kept


def _hit(record: ImageRecord, score: float) -> Hit:
    return Hit(record.id, record.path, score, record.captions, record.file_size, record.mtime_ns)


def empty_query_message(parsed: ParsedQuery) -> str:
    """Why a query with no positive term, picture or category cannot run."""
    if parsed.negatives:
        return (
            "only minus terms: say what to look for too, e.g. `a beach -people` "
            "(a minus term only pushes results away)"
        )
    return "nothing to search for: describe a picture in a few words"


def clean_query(query: str) -> str:
    """Trim a search text; raises `EmptyQuery` when nothing is left."""
    text = " ".join(query.split())
    if not text:
        raise EmptyQuery("nothing to search for: describe a picture in a few words")
    return text[:MAX_QUERY_CHARS]
