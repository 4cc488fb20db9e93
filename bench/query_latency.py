"""Query latency and ANN recall over an embedded collection of COCO2014's size (123,287
vectors with metadata), in process, through the calls the bot makes (bot/services.py):
`SearchService.open` from the settings, then for each query `prepare` and its first `page`.

- text: tokenise → encode → top-10 with metadata (`prepare_texts`, as the bot's
  micro-batcher calls it, with a batch of one);
- image: 640×480 JPEG decode → encode → top-10 with metadata (`prepare` of the photo);
- recall@10 of Chroma's HNSW against exact search on the same CLIP-like vectors, for the
  project's HNSW settings and for Chroma's defaults, side by side.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import Timings, bench_settings, clip_like_vectors, make_photos, vit_b32_dir
from bench.report import document, table

COCO_SIZE = 123_287
QUERIES = [
    "a dog running on a beach",
    "two cats sleeping on a sofa",
    "a red double decker bus in the rain",
    "a man riding a horse in a field",
    "a plate of food with broccoli and rice",
    "a group of people flying kites in a park",
    "a kitchen with a stove and a refrigerator",
    "a train stopped at a station",
    "a child holding an umbrella",
    "a bowl of fruit on a wooden table",
]
CHROMA_DEFAULT_HNSW = {
    "space": "cosine",
    "ef_construction": 100,
    "ef_search": 100,
    "max_neighbors": 16,
}
K = 10
"""Results per query."""
WARM_UP = 5
"""Queries of each kind run before the timed ones."""


@dataclass(frozen=True)
class AnnRecall:
    """One HNSW configuration against exact search: recall@10 and query times, for
    image-like and text-like query vectors."""

    image: float
    image_ms: Timings
    text_like: float
    text_like_ms: Timings


@dataclass(frozen=True)
class QueryLatency:
    """What `measure` found."""

    vectors: int
    queries: int
    tokenizer: str
    dtype: str
    insert_per_s: float
    text: Timings
    """A text search through the bot's path."""
    text_fp32: Timings
    """The same with DTYPE=float32 (the comparison)."""
    image: Timings
    """A photo search through the bot's path."""
    hnsw: dict
    project: AnnRecall
    """The project's HNSW settings (`core.store.database.HNSW`)."""
    chroma_defaults: AnnRecall

    def to_json(self) -> dict:
        return {
            "vectors": self.vectors,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "insert_per_s": round(self.insert_per_s),
            "text_p50_ms": self.text.p50_ms,
            "text_p95_ms": self.text.p95_ms,
            "text_fp32_p50_ms": self.text_fp32.p50_ms,
            "image_p50_ms": self.image.p50_ms,
            "image_p95_ms": self.image.p95_ms,
            "ann_recall_at_10": round(self.project.image, 4),
            "ann_query_ms": asdict(self.project.image_ms),
            "hnsw": self.hnsw,
            "chroma_default_recall_at_10": round(self.chroma_defaults.image, 4),
            "chroma_default_query_ms": asdict(self.chroma_defaults.image_ms),
            "ann_recall_at_10_text_like": round(self.project.text_like, 4),
            "ann_query_text_like_ms": asdict(self.project.text_like_ms),
            "chroma_default_recall_at_10_text_like": round(self.chroma_defaults.text_like, 4),
        }

    def to_markdown(self) -> str:
        project, defaults = self.project, self.chroma_defaults
        latency = table(
            f"Query latency, {self.vectors:,} vectors with metadata, ViT-B/32 {self.dtype}, "
            f"{self.queries} queries each, tokenizer: {self.tokenizer}",
            ["query", "p50 ms", "p95 ms", "target"],
            [
                [
                    "text: tokenise → encode → top-10",
                    self.text.p50_ms,
                    self.text.p95_ms,
                    "p50 ≤ 25, p95 ≤ 50",
                ],
                [
                    "text, float32 instead (comparison)",
                    self.text_fp32.p50_ms,
                    self.text_fp32.p95_ms,
                    "",
                ],
                [
                    "image: JPEG decode → encode → top-10",
                    self.image.p50_ms,
                    self.image.p95_ms,
                    "p50 ≤ 80",
                ],
                [
                    "Chroma top-10 alone (project HNSW)",
                    project.image_ms.p50_ms,
                    project.image_ms.p95_ms,
                    "",
                ],
            ],
        )
        recall = table(
            f"ANN recall@10 vs exact search, {self.vectors:,} CLIP-like vectors",
            ["HNSW settings", "recall@10, image queries", "recall@10, text-like", "query p50 ms"],
            [
                [
                    f"project: {_describe(self.hnsw)}",
                    f"{project.image:.3f}",
                    f"{project.text_like:.3f}",
                    project.image_ms.p50_ms,
                ],
                [
                    f"Chroma defaults: {_describe(CHROMA_DEFAULT_HNSW)}",
                    f"{defaults.image:.3f}",
                    f"{defaults.text_like:.3f}",
                    defaults.image_ms.p50_ms,
                ],
            ],
        )
        return document(latency, recall)


def coco_like_record(n: int, photo: Path):
    """Record `n` of a benchmark collection: the metadata a COCO record carries (split, size,
    five captions, file size and mtime), all pointing at one real photo."""
    from core.store.records import ImageRecord

    return ImageRecord(
        id=str(n),
        path=str(photo),
        split="train2014",
        width=640,
        height=480,
        captions=tuple(f"{QUERIES[(n + i) % len(QUERIES)]} number {n}" for i in range(5)),
        file_size=150_000,
        mtime_ns=1_700_000_000_000_000_000 + n,
    )


def build(settings, name: str, vectors: np.ndarray, photo: Path, hnsw: dict):
    """A collection of `vectors` with COCO-like records; returns (store, inserts per second)."""
    from core.search.sendable_files import record_roots
    from core.store.database import Database
    from core.store.records import ImageRecord

    records = [coco_like_record(n, photo) for n in range(len(vectors))]
    store = Database(settings).open(
        name, ImageRecord, model=settings.clip_model, dim=vectors.shape[1], create=True, hnsw=hnsw
    )
    record_roots(settings, [str(photo.resolve().parent)])  # the search sends only files there
    started = time.perf_counter()
    store.upsert(records, vectors)
    return store, len(vectors) / (time.perf_counter() - started)


def ann_top_k(store, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[float]]:
    """The ids of each query's `k` nearest records through the store (HNSW), one query at a
    time with metadata, as the bot asks; and each query's seconds."""
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        [matches] = store.query(query[None, :], k)
        latencies.append(time.perf_counter() - started)
        found.append([m.record.id for m in matches])
    return found, latencies


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Row indices of each query's `k` nearest rows of `base` by brute force (inner product of
    unit vectors), best first; `chunk` rows at a time, so a million rows need little scratch."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        best_rows = np.hstack([best_rows, top + start])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def recall(found: list[list[str]], exact: np.ndarray) -> float:
    """Mean share of the exact top-k rows (ids `str(row)`) among the ids found."""
    hits = [
        len(set(f) & {str(row) for row in e}) / len(e) for f, e in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits))


def text_like(queries: np.ndarray, seed: int = 1) -> np.ndarray:
    """Queries shaped like CLIP text embeddings of these pictures: CLIP's texts and images
    lie in two cones apart (the modality gap), so a caption's vector has a cosine of only
    about 0.3 with its picture's and sits off the image manifold, where an HNSW graph
    built from image vectors is harder to navigate than for image queries. Model: the
    picture's vector scaled to 0.3, plus one shared gap direction, plus noise."""
    rng = np.random.default_rng(seed)
    gap = rng.normal(size=queries.shape[1])
    gap /= np.linalg.norm(gap)
    noise = rng.normal(size=queries.shape) * 0.3 / np.sqrt(queries.shape[1])
    texts = 0.3 * queries + 0.9 * gap + noise
    return (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)


def measure(quick: bool, workdir: Path) -> QueryLatency:
    """Build the collection twice (the project's HNSW settings and Chroma's defaults), measure
    ANN recall on both, then time searches through the bot's path."""
    count = 20_000 if quick else COCO_SIZE
    n_queries = 60 if quick else 200
    clip_dir = vit_b32_dir()
    photos = make_photos(workdir.parent / "photos", n_queries)
    vectors = clip_like_vectors(count + 300)
    base, held_out = vectors[:count], vectors[count:]
    settings = bench_settings(workdir, clip_dir.path, collection="latency")

    store, insert_rate = build(settings, "latency", base, photos[0], _project_hnsw())
    default_store, _ = build(settings, "chroma_defaults", base, photos[0], CHROMA_DEFAULT_HNSW)
    texts = text_like(held_out)
    project = ann_recall(store, base, held_out, texts)
    defaults = ann_recall(default_store, base, held_out, texts)
    search = open_search(settings)
    text, image = bot_searches(search, [p.read_bytes() for p in photos])
    text_fp32 = bot_text_searches(open_search(settings, dtype="float32"), n_queries)
    return QueryLatency(
        vectors=count,
        queries=n_queries,
        tokenizer=clip_dir.tokenizer,
        dtype=str(search.encoder.dtype).removeprefix("torch."),
        insert_per_s=insert_rate,
        text=text,
        text_fp32=text_fp32,
        image=image,
        hnsw=_project_hnsw(),
        project=project,
        chroma_defaults=defaults,
    )


def ann_recall(store, base: np.ndarray, images: np.ndarray, texts: np.ndarray) -> AnnRecall:
    """Recall@10 and query times of `store` for image-like and text-like query vectors."""
    image, image_ms = recall_at_10(store, base, images)
    text, text_ms = recall_at_10(store, base, texts)
    return AnnRecall(image, image_ms, text, text_ms)


def recall_at_10(store, base: np.ndarray, queries: np.ndarray) -> tuple[float, Timings]:
    found, latencies = ann_top_k(store, queries, 10)
    return recall(found, exact_top_k(base, queries, 10)), Timings.of(latencies)


# --- the bot's path ----------------------------------------------------------------------------


def open_search(settings, dtype: str | None = None):
    """The search service as the bot opens it (`SearchService.open`: the encoder, the
    collection, the host's roots, the options), with DTYPE `dtype` when given."""
    from core.search.service import SearchService

    if dtype is not None:
        settings = settings.model_copy(update={"dtype": dtype})
    return SearchService.open(settings)


def text_search(search, text: str) -> None:
    """A text message, as the bot answers it: its micro-batcher prepares the batch of texts
    (here one) in one encoder call, then the first page is read."""
    [prepared] = search.prepare_texts([text])
    _check(search.page(prepared, K))


def photo_search(search, photo: bytes) -> None:
    """A photo, as the bot answers it: prepare its query (decode, embed), read the first
    page."""
    from core.search.service import Query

    _check(search.page(search.prepare(Query(picture=photo)), K))


def bot_searches(search, photos: list[bytes]) -> tuple[Timings, Timings]:
    """Text and photo searches, one of each in turn (drift hits both alike), after a
    warm-up; one photo per query, the texts in turn."""
    for n in range(WARM_UP):
        text_search(search, QUERIES[n])
        photo_search(search, photos[n])
    text_s, photo_s = [], []
    for n, photo in enumerate(photos):
        text_s.append(_seconds(text_search, search, QUERIES[n % len(QUERIES)]))
        photo_s.append(_seconds(photo_search, search, photo))
    return Timings.of(text_s), Timings.of(photo_s)


def bot_text_searches(search, count: int) -> Timings:
    """`count` text searches after a warm-up (which also loads the model)."""
    text_search(search, QUERIES[0])
    return Timings.of(
        [_seconds(text_search, search, QUERIES[n % len(QUERIES)]) for n in range(count)]
    )


def _seconds(call, *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def _check(page) -> None:
    """A search of the benchmark finds a whole page."""
    assert len(page.hits) == K, f"{len(page.hits)} hits, not {K}"


def _project_hnsw() -> dict:
    from core.store.database import HNSW

    return dict(HNSW)


def _describe(hnsw: dict) -> str:
    return (
        f"M={hnsw['max_neighbors']}, ef_construction={hnsw['ef_construction']}, "
        f"ef_search={hnsw['ef_search']}"
    )
