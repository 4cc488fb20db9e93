"""Fidelity of the fast path: bfloat16 vs float32 embeddings (and JPEG draft decoding vs full
decoding, and the index builder's torch resize vs the processor's exact pixels), by cosine
and by the overlap of top-10 search results, for the ViT-B/32 architecture (random
weights) and for the trained tiny fixture model.

`measure` returns a `Fidelity`, which renders its JSON and its table."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import TINY_CLIP, make_photos, vit_b32_dir
from bench.query_latency import QUERIES
from bench.report import document, table


@dataclass(frozen=True)
class Agreement:
    """How close two ways of embedding the same inputs are."""

    mean_cosine: float
    min_cosine: float
    top10_overlap: float | None = None
    """The mean share of top-10 results both ways find (None: not measured)."""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Fidelity:
    """What `measure` found."""

    bf16_vit: Agreement
    """bf16 vs fp32, ViT-B/32 with random weights."""
    bf16_tiny: Agreement
    """bf16 vs fp32, the trained tiny fixture model."""
    draft: Agreement
    """Draft vs full JPEG decoding."""
    builder: Agreement
    """The index builder's torch resize vs the processor's exact pixels."""

    def to_json(self) -> dict:
        return {
            "bf16_mean_cosine": self.bf16_vit.mean_cosine,
            "bf16_min_cosine": self.bf16_vit.min_cosine,
            "bf16_top10_overlap": self.bf16_vit.top10_overlap,
            "bf16_tiny_fixture": self.bf16_tiny.to_json(),
            "draft_vs_full_decode": self.draft.to_json(),
            "builder_vs_exact_pixels": self.builder.to_json(),
        }

    def to_markdown(self) -> str:
        vit = "ViT-B/32 (random weights)"
        rows = [
            (vit, "bf16 vs fp32", self.bf16_vit),
            ("tiny fixture (trained)", "bf16 vs fp32", self.bf16_tiny),
            (vit, "draft vs full decode", self.draft),
            (vit, "builder's torch resize vs exact pixels (bf16)", self.builder),
        ]
        return document(
            table(
                "Fidelity of the fast path (bf16 vs fp32; draft vs full JPEG decoding; the index "
                "builder's torch resize vs the processor's exact pixels)",
                ["model", "comparison", "mean cosine", "min cosine", "top-10 overlap"],
                [
                    [model, what, a.mean_cosine, a.min_cosine, _or_blank(a.top10_overlap)]
                    for model, what, a in rows
                ],
            )
        )


def measure(quick: bool, workdir: Path) -> Fidelity:
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
    return Fidelity(vit, tiny, draft, builder)


def _overlap_at_10(
    index_a: np.ndarray, queries_a: np.ndarray, index_b: np.ndarray, queries_b: np.ndarray
) -> float:
    top_a = np.argsort(-(queries_a @ index_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries_b @ index_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_a, top_b, strict=True)]))


def compare(model: Path, images: list, texts: list[str], n_index: int) -> Agreement:
    from core.models.encoder import DualEncoder

    fp32 = DualEncoder(str(model), device="cpu", dtype="float32")
    bf16 = DualEncoder(str(model), device="cpu", dtype="bfloat16")
    a_img, b_img = fp32.embed_images(images), bf16.embed_images(images)
    a_txt, b_txt = fp32.embed_texts(texts), bf16.embed_texts(texts)
    cosines = np.concatenate([np.sum(a_img * b_img, axis=1), np.sum(a_txt * b_txt, axis=1)])
    index_a, index_b = a_img[:n_index], b_img[:n_index]
    queries_a = np.concatenate([a_img[n_index:], a_txt])
    queries_b = np.concatenate([b_img[n_index:], b_txt])
    return Agreement(
        mean_cosine=round(float(cosines.mean()), 5),
        min_cosine=round(float(cosines.min()), 5),
        top10_overlap=round(_overlap_at_10(index_a, queries_a, index_b, queries_b), 4),
    )


def draft_vs_full(model: Path, paths: list[Path]) -> Agreement:
    from core.images import load_image
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(model), device="cpu", dtype="float32")
    draft = encoder.embed_images([load_image(p, min_side=encoder.input_size) for p in paths])
    full = encoder.embed_images([load_image(p) for p in paths])
    cosines = np.sum(draft * full, axis=1)
    return Agreement(
        mean_cosine=round(float(cosines.mean()), 5), min_cosine=round(float(cosines.min()), 5)
    )


def builder_vs_exact(model: Path, paths: list[Path], texts: list[str], n_index: int) -> Agreement:
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
    return Agreement(
        mean_cosine=round(float(cosines.mean()), 5),
        min_cosine=round(float(cosines.min()), 5),
        top10_overlap=round(_overlap_at_10(exact[:n_index], queries, built[:n_index], queries), 4),
    )


def _or_blank(value: float | None) -> object:
    return "" if value is None else value
