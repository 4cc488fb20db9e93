"""Query latency and ANN recall over an embedded collection of COCO2014's size (123,287
vectors with metadata), in process, through the project's SearchService:

- text: tokenise → encode → top-10 with metadata;
- image: 640×480 JPEG decode → encode → top-10 with metadata;
- recall@10 of Chroma's HNSW against exact search on the same CLIP-like vectors, for the
  project's HNSW settings and for Chroma's defaults, side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.common import (
    bench_settings,
    clip_like_vectors,
    make_photos,
    summarise_ms,
    table,
    vit_b32_dir,
)

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


def recall_at_10(store, base: np.ndarray, queries: np.ndarray) -> tuple[float, dict]:
    found, latencies = ann_top_k(store, queries, 10)
    return recall(found, exact_top_k(base, queries, 10)), summarise_ms(latencies)


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


def run(quick: bool, workdir: Path) -> dict:
    from core.models.encoder import DualEncoder
    from core.search.sendable_files import HostRoots, SendableFiles
    from core.search.service import SearchService

    count = 20_000 if quick else COCO_SIZE
    n_queries = 60 if quick else 200
    clip_dir = vit_b32_dir()
    clip = clip_dir.path
    photos = make_photos(workdir.parent / "photos", n_queries)
    vectors = clip_like_vectors(count + 300)
    base, held_out = vectors[:count], vectors[count:]
    settings = bench_settings(workdir, clip, collection="latency")

    store, insert_rate = build(settings, "latency", base, photos[0], _project_hnsw())
    default_store, _ = build(settings, "chroma_defaults", base, photos[0], CHROMA_DEFAULT_HNSW)
    recall, chroma_ms = recall_at_10(store, base, held_out)
    default_recall, default_ms = recall_at_10(default_store, base, held_out)
    texts = text_like(held_out)
    text_recall, text_ann_ms = recall_at_10(store, base, texts)
    default_text_recall, _ = recall_at_10(default_store, base, texts)

    encoder = DualEncoder.from_settings(settings)
    encoder.load()
    files = SendableFiles(HostRoots(settings))
    service = SearchService(encoder, store, files=files, max_image_pixels=settings.max_image_pixels)
    images = [p.read_bytes() for p in photos]
    for n in range(5):  # warm-up
        service.by_text(QUERIES[n], 10)
        service.by_image_file(images[n], 10)
    text_s, image_s = [], []
    for n in range(n_queries):
        started = time.perf_counter()
        hits = service.by_text(QUERIES[n % len(QUERIES)], 10)
        text_s.append(time.perf_counter() - started)
        assert len(hits) == 10
        started = time.perf_counter()
        hits = service.by_image_file(images[n], 10)
        image_s.append(time.perf_counter() - started)
        assert len(hits) == 10
    text, image = summarise_ms(text_s), summarise_ms(image_s)
    fp32 = DualEncoder(settings.clip_model, device=settings.device, dtype="float32")
    fp32_service = SearchService(
        fp32, store, files=files, max_image_pixels=settings.max_image_pixels
    )
    fp32_service.by_text(QUERIES[0], 10)  # warm-up (also loads)
    fp32_s = []
    for n in range(n_queries):
        started = time.perf_counter()
        fp32_service.by_text(QUERIES[n % len(QUERIES)], 10)
        fp32_s.append(time.perf_counter() - started)
    text_fp32 = summarise_ms(fp32_s)
    result = {
        "vectors": count,
        "tokenizer": clip_dir.tokenizer,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "insert_per_s": round(insert_rate),
        "text_p50_ms": text["p50_ms"],
        "text_p95_ms": text["p95_ms"],
        "text_fp32_p50_ms": text_fp32["p50_ms"],
        "image_p50_ms": image["p50_ms"],
        "image_p95_ms": image["p95_ms"],
        "ann_recall_at_10": round(recall, 4),
        "ann_query_ms": chroma_ms,
        "hnsw": _project_hnsw(),
        "chroma_default_recall_at_10": round(default_recall, 4),
        "chroma_default_query_ms": default_ms,
        "ann_recall_at_10_text_like": round(text_recall, 4),
        "ann_query_text_like_ms": text_ann_ms,
        "chroma_default_recall_at_10_text_like": round(default_text_recall, 4),
    }
    table(
        f"Query latency, {count:,} vectors with metadata, ViT-B/32 {result['dtype']}, "
        f"{n_queries} queries each, tokenizer: {clip_dir.tokenizer}",
        ["query", "p50 ms", "p95 ms", "target"],
        [
            [
                "text: tokenise → encode → top-10",
                text["p50_ms"],
                text["p95_ms"],
                "p50 ≤ 25, p95 ≤ 50",
            ],
            ["text, float32 instead (comparison)", text_fp32["p50_ms"], text_fp32["p95_ms"], ""],
            ["image: JPEG decode → encode → top-10", image["p50_ms"], image["p95_ms"], "p50 ≤ 80"],
            ["Chroma top-10 alone (project HNSW)", chroma_ms["p50_ms"], chroma_ms["p95_ms"], ""],
        ],
    )
    table(
        f"ANN recall@10 vs exact search, {count:,} CLIP-like vectors",
        ["HNSW settings", "recall@10, image queries", "recall@10, text-like", "query p50 ms"],
        [
            [
                f"project: {_describe(_project_hnsw())}",
                f"{recall:.3f}",
                f"{text_recall:.3f}",
                chroma_ms["p50_ms"],
            ],
            [
                f"Chroma defaults: {_describe(CHROMA_DEFAULT_HNSW)}",
                f"{default_recall:.3f}",
                f"{default_text_recall:.3f}",
                default_ms["p50_ms"],
            ],
        ],
    )
    return result


def _project_hnsw() -> dict:
    from core.store.database import HNSW

    return dict(HNSW)


def _describe(hnsw: dict) -> str:
    return (
        f"M={hnsw['max_neighbors']}, ef_construction={hnsw['ef_construction']}, "
        f"ef_search={hnsw['ef_search']}"
    )
