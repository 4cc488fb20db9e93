"""Search: text or image in, ranked hits out. Synchronous and free of Telegram, so the bot,
the terminal CLI (`python -m core search`) and the benchmarks all run the very same path:
`prepare` a query, then `page` through its results."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.config import Settings
from core.errors import EmptyQuery, SearchBotError, UnknownPicture
from core.images import ImageSource, load_image
from core.library.records import LibraryRecord
from core.library.store import LibraryScope
from core.search.fusion import CaptionFusion
from core.search.prepared import PreparedQuery
from core.search.query import (
    HASHTAG_PROMPT,
    MINUS_WEIGHT,
    PLUS_WEIGHT,
    ParsedQuery,
    Tokenizer,
    combine,
    has_real_tokens,
    parse_query,
    resolve_categories,
)
from core.search.ranking import Ranker
from core.search.sendable_files import HostRoots, SendableFiles
from core.store.database import Database, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
"""Far more than CLIP's 77 tokens; longer text is cut before tokenising, not refused."""
TOTAL_MAX_AGE_S = 30.0
"""How old the collection's size may be that a search checks (not empty) and bounds its
fetches by: counting grows with the collection, and for a large one costs more than the
search itself (docs/benchmarks.md). An empty collection is always counted afresh."""
MAX_RESULTS = 200
"""Paging stops here: results beyond the 200th are never shown (`more` is False)."""
SYMBOLS_NOTE = " (emoji only: words find better)"
"""Added to the reading of a search whose only terms are symbols the model knows (`🐶`)."""


def shown_score(score: float) -> str:
    """A hit's score as people read it, the same in the bot and the CLI: its cosine with two
    decimals, never below "0.00" (a negative cosine means as unrelated as 0, and "-0.00"
    reads as a mistake)."""
    return f"{max(0.0, round(score, 2)):.2f}"


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
    library: LibraryRecord | None = None
    """A picture of the chat's own library (sent by its file_id), else None."""

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
    like_vector: tuple[float, ...] | None = None
    """The vector of `like_id` when the caller has it (a chat library's picture)."""
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
    """Pictures in the collection (not how many results the query has: see `found`)."""
    below_min_score: int = 0
    """Results dropped by MIN_SCORE on this page (all of them when `hits` is empty)."""
    found: int | None = None
    """How many results the query has in all, when the search reached their end; None while
    more may follow (paging shows at most `MAX_RESULTS` of them)."""


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
    exclude: tuple[str, ...] = ()
    """The indexed picture searched like: not a result of its own search."""
    note: str = ""
    """Said after the reading (`SYMBOLS_NOTE`)."""


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
        self.ranker = Ranker(store, files, self.fusion, self.options.duplicate_cosine)

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
        self,
        prepared: PreparedQuery,
        k: int,
        offset: int = 0,
        *,
        nearest_anyway: bool = False,
        library: LibraryScope | None = None,
    ) -> SearchPage:
        """Results offset+1 .. offset+k of `prepared`: near-duplicates collapsed, only
        pictures of its categories, below MIN_SCORE dropped (unless `nearest_anyway`), text
        queries fused with the captions' ranking (`core.search.ranking`), and with `library`
        the chat's own pictures ranked among them. A page is full unless the results end on
        it. Paging re-queries the store, up to `MAX_RESULTS` deep."""
        if k < 1 or offset < 0:
            raise ValueError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        total = self.store.count(max_age_s=TOTAL_MAX_AGE_S)
        end = min(offset + k, MAX_RESULTS)
        if offset >= end:
            return SearchPage([], offset, False, prepared.reading, total)
        floor = None if nearest_anyway else prepared.min_score
        ranking = self.ranker.rank(prepared, end + 1, floor, total)
        kept = [_hit(m.record, m.score) for m in ranking.kept]
        complete = ranking.complete
        if library is not None and not prepared.categories:  # library pictures have none
            mine = library.library.search(
                library.chat_id,
                np.asarray(prepared.vector),
                end + 1,
                floor=floor,
                exclude=prepared.exclude,
            )
            kept = sorted(
                kept + [_library_hit(m.record, m.score) for m in mine], key=lambda hit: -hit.score
            )
            complete = complete and len(mine) <= end
        return SearchPage(
            hits=kept[offset:end],
            offset=offset,
            more=len(kept) > end and end < MAX_RESULTS,
            reading=prepared.reading,
            total=total,
            below_min_score=ranking.below_floor,
            found=len(kept) if complete else None,
        )

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
            stored = (
                np.asarray(query.like_vector, dtype=np.float32)
                if query.like_vector is not None
                else self.store.vectors([query.like_id]).get(query.like_id)
            )
            if stored is None:
                raise UnknownPicture(
                    f"picture {query.like_id} is not in the index (any more): search again"
                )
            draft.base, draft.base_reading = stored, f"like picture {query.like_id}"
            draft.exclude = (query.like_id,)
        elif query.picture is not None:
            draft.base = self.encoder.embed_images([self._load(query.picture)])[0]
            draft.base_reading = "your photo"
        if parsed.symbols:
            alone = draft.base is None and not (parsed.positives or parsed.negatives or categories)
            draft.parsed = parsed = self._with_symbols(parsed)
            draft.note = SYMBOLS_NOTE if alone and parsed.positives else ""
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
            reading=draft.parsed.reading(draft.base_reading, draft.categories) + draft.note,
            fuse_captions=draft.base is None,
            min_score=self.options.min_score,
            exclude=draft.exclude,
        )

    def _with_symbols(self, parsed: ParsedQuery) -> ParsedQuery:
        """`parsed` with its terms of symbols (emoji) among the positives where the model's
        tokenizer has tokens of its own for them, and without the others: a model reads a
        symbol it has no token for as noise, and would answer an emoji with random pictures."""
        tokenizer = _tokenizer(self.encoder)
        known = tuple(term for term in parsed.symbols if has_real_tokens(tokenizer, term))
        return replace(parsed, positives=parsed.positives + known, symbols=())


def _tokenizer(encoder: DualEncoder) -> Tokenizer:
    """The encoder's text tokenizer (`DualEncoder` has no public accessor for it yet)."""
    return encoder._model().processor.tokenizer


def _hit(record: ImageRecord, score: float) -> Hit:
    return Hit(record.id, record.path, score, record.captions, record.file_size, record.mtime_ns)


def _library_hit(record: LibraryRecord, score: float) -> Hit:
    captions = (record.caption,) if record.caption else ()
    return Hit(record.id, "", score, captions, library=record)


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
