"""Fidelity of the fast path: bfloat16 vs float32 embeddings (and JPEG draft decoding vs full
decoding, and the index builder's torch resize vs the processor's exact pixels), by cosine
and by the overlap of top-10 search results, for the ViT-B/32 architecture (random
weights) and for the trained tiny fixture model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from bench.common import TINY_CLIP, make_photos, table, vit_b32_dir
from bench.query_latency import QUERIES


def _overlap_at_10(
    index_a: np.ndarray, queries_a: np.ndarray, index_b: np.ndarray, queries_b: np.ndarray
) -> float:
    top_a = np.argsort(-(queries_a @ index_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries_b @ index_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_a, top_b, strict=True)]))


def compare(model: Path, images: list, texts: list[str], n_index: int) -> dict:
    from core.models.encoder import DualEncoder

    fp32 = DualEncoder(str(model), device="cpu", dtype="float32")
    bf16 = DualEncoder(str(model), device="cpu", dtype="bfloat16")
    a_img, b_img = fp32.embed_images(images), bf16.embed_images(images)
    a_txt, b_txt = fp32.embed_texts(texts), bf16.embed_texts(texts)
    cosines = np.concatenate([np.sum(a_img * b_img, axis=1), np.sum(a_txt * b_txt, axis=1)])
    index_a, index_b = a_img[:n_index], b_img[:n_index]
    queries_a = np.concatenate([a_img[n_index:], a_txt])
    queries_b = np.concatenate([b_img[n_index:], b_txt])
    return {
        "mean_cosine": round(float(cosines.mean()), 5),
        "min_cosine": round(float(cosines.min()), 5),
        "top10_overlap": round(_overlap_at_10(index_a, queries_a, index_b, queries_b), 4),
    }


def draft_vs_full(model: Path, paths: list[Path]) -> dict:
    from core.images import load_image
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(model), device="cpu", dtype="float32")
    draft = encoder.embed_images([load_image(p, min_side=encoder.input_size) for p in paths])
    full = encoder.embed_images([load_image(p) for p in paths])
    cosines = np.sum(draft * full, axis=1)
    return {
        "mean_cosine": round(float(cosines.mean()), 5),
        "min_cosine": round(float(cosines.min()), 5),
    }


def builder_vs_exact(model: Path, paths: list[Path], texts: list[str], n_index: int) -> dict:
    """The index builder's vectors (`prepare` + `batch_pixels`: torch's resize) against the
    queries' (`embed_images`: the processor's exact pixels), both bfloat16 from draft
    decoding; the overlap is of top-10 results for the same exact-path queries over an
    index built either way."""
    from core.images import load_image
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(model), device="cpu", dtype="bfloat16")
    pictures = [load_image(p, min_side=encoder.input_size) for p in paths]
    exact = encoder.embed_images(pictures)
    built = encoder.embed_pixels(encoder.batch_pixels([encoder.prepare(p) for p in pictures]))
    cosines = np.sum(exact * built, axis=1)
    queries = np.concatenate([exact[n_index:], encoder.embed_texts(texts)])
    return {
        "mean_cosine": round(float(cosines.mean()), 5),
        "min_cosine": round(float(cosines.min()), 5),
        "top10_overlap": round(
            _overlap_at_10(exact[:n_index], queries, built[:n_index], queries), 4
        ),
    }


def run(quick: bool, workdir: Path) -> dict:
    from PIL import Image

    from tests.fixtures.shapes import LABELS, caption, draw

    count = 80 if quick else 250
    paths = make_photos(workdir.parent / "photos", count)
    photos = [Image.open(p).convert("RGB") for p in paths]
    vit = compare(vit_b32_dir().path, photos, QUERIES, n_index=count - 40)
    rng = random.Random(7)
    shapes = [draw(*LABELS[n % 12], width=120, height=90, rng=rng) for n in range(240)]
    tiny = compare(TINY_CLIP, shapes, [caption(c, s) for c, s in LABELS], n_index=200)
    draft = draft_vs_full(vit_b32_dir().path, paths[:60])
    builder = builder_vs_exact(vit_b32_dir().path, paths, QUERIES, n_index=count - 40)
    table(
        "Fidelity of the fast path (bf16 vs fp32; draft vs full JPEG decoding; the index "
        "builder's torch resize vs the processor's exact pixels)",
        ["model", "comparison", "mean cosine", "min cosine", "top-10 overlap"],
        [
            [
                "ViT-B/32 (random weights)",
                "bf16 vs fp32",
                vit["mean_cosine"],
                vit["min_cosine"],
                vit["top10_overlap"],
            ],
            [
                "tiny fixture (trained)",
                "bf16 vs fp32",
                tiny["mean_cosine"],
                tiny["min_cosine"],
                tiny["top10_overlap"],
            ],
            [
                "ViT-B/32 (random weights)",
                "draft vs full decode",
                draft["mean_cosine"],
                draft["min_cosine"],
                "",
            ],
            [
                "ViT-B/32 (random weights)",
                "builder's torch resize vs exact pixels (bf16)",
                builder["mean_cosine"],
                builder["min_cosine"],
                builder["top10_overlap"],
            ],
        ],
    )
    return {
        "bf16_mean_cosine": vit["mean_cosine"],
        "bf16_min_cosine": vit["min_cosine"],
        "bf16_top10_overlap": vit["top10_overlap"],
        "bf16_tiny_fixture": tiny,
        "draft_vs_full_decode": draft,
        "builder_vs_exact_pixels": builder,
    }
