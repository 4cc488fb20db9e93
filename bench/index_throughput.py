"""Index throughput over COCO-like 640×480 JPEGs, ViT-B/32 architecture, side by side:

(a) naive: the original project's way, one image at a time through CLIPProcessor and fp32
    get_image_features, one Chroma add per image;
(b) ceiling: ready pixel tensors through the image tower, best dtype and batch size;
(c) pipeline: `index_builder.py` end to end (decode → encode → store), as a process;
plus what each optimisation of (c) gives (ablations, same photos, same run).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    bench_settings,
    make_photos,
    run_measured,
    subprocess_env,
    table,
    vit_b32_dir,
)

# GPU runs (bench/gpu.sh) set these; the defaults are the CPU's.
DEVICE = os.environ.get("BENCH_DEVICE", "auto")
BATCH = os.environ.get("BENCH_BATCH", "32")
WORKERS = os.environ.get("BENCH_WORKERS", "2")
PHOTOS = int(os.environ.get("BENCH_PHOTOS", "500"))
CLIP_RETRIEVAL_A100_IPS = 2500
"""clip-retrieval's reported ViT-B/32 inference speed per A100, limited by image resizing."""


def naive(photos: list[Path], clip: Path, workdir: Path) -> float:
    """Images/s of the one-at-a-time fp32 baseline."""
    import chromadb
    import torch
    from chromadb.config import Settings as ChromaSettings
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip).eval()
    processor = CLIPProcessor.from_pretrained(clip)
    client = chromadb.PersistentClient(
        path=str(workdir / "naive-chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = client.get_or_create_collection("naive", embedding_function=None)
    started = time.perf_counter()
    for n, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            features = model.get_image_features(**processor(images=image, return_tensors="pt"))
        vector = torch.nn.functional.normalize(features.pooler_output, dim=-1)[0].numpy()
        collection.add(ids=[str(n)], embeddings=[vector], metadatas=[{"path": str(path)}])
    return len(photos) / (time.perf_counter() - started)


def ceiling(clip: Path, count: int) -> tuple[float, dict[int, float], str, float]:
    """Images/s of the image tower alone on ready pixels: (best uncompiled, uncompiled per
    batch size, dtype, compiled at the builder's batch size)."""
    from core.models.clip import ClipEncoder

    encoder = ClipEncoder(str(clip), device=DEVICE, dtype="auto")
    encoder.load()
    pixels = np.random.default_rng(0).normal(size=(count, 3, 224, 224)).astype(np.float32)
    encoder.embed_pixels(pixels[:8], batch_size=8)  # warm-up
    rates = {}
    for batch in (16, 32, 64) if encoder.device.type == "cpu" else (64, 256, 512):
        started = time.perf_counter()
        encoder.embed_pixels(pixels, batch_size=batch)
        rates[batch] = count / (time.perf_counter() - started)
    encoder.compile(int(BATCH))  # compiles now, untimed, as the builder does
    started = time.perf_counter()
    encoder.embed_pixels(pixels, batch_size=int(BATCH))
    compiled = count / (time.perf_counter() - started)
    return max(rates.values()), rates, str(encoder.dtype).removeprefix("torch."), compiled


def pipeline(
    folder: Path, clip: Path, workdir: Path, name: str, *args: str, **overrides: object
) -> dict:
    """Run index_builder.py on `folder` as a process: images/s of its decode → encode →
    store loop (from its summary), wall time and peak memory."""
    settings = bench_settings(workdir, clip, collection=name, **overrides)
    code, output, wall, rss = run_measured(
        [
            sys.executable,
            str(ROOT / "index_builder.py"),
            "--folder",
            str(folder),
            "--no-progress",
            *args,
        ],
        subprocess_env(settings),
        workdir,
    )
    if code != 0:
        raise RuntimeError(f"index_builder.py failed:\n{output}")
    rate = re.search(r"\(([\d.]+) images/s\)", output)
    indexed = re.search(r"indexed ([\d,]+)", output)
    return {
        "images_per_s": float(rate.group(1)) if rate else 0.0,
        "indexed": int(indexed.group(1).replace(",", "")) if indexed else 0,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(rss),
    }


def decode_cost(photos: list[Path], clip: Path) -> dict[str, float]:
    """Milliseconds per photo to decode and preprocess, with and without JPEG draft mode."""
    from core.images import load_image
    from core.models.clip import ClipEncoder

    encoder = ClipEncoder(str(clip), device="cpu", dtype="float32")
    data = [p.read_bytes() for p in photos[:60]]
    costs = {}
    for label, min_side in (("draft", encoder.input_size), ("full", None)):
        started = time.perf_counter()
        for blob in data:
            encoder.preprocess([load_image(blob, min_side=min_side)])
        costs[label] = (time.perf_counter() - started) / len(data) * 1000
    return {f"{k}_ms": round(v, 2) for k, v in costs.items()}


def run(quick: bool, workdir: Path) -> dict:
    count = 120 if quick else PHOTOS
    clip = vit_b32_dir().path
    photos = make_photos(workdir.parent / "photos", count)
    folder = workdir / "photos-subset"
    folder.mkdir(parents=True, exist_ok=True)
    for path in photos:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path)

    decoding = decode_cost(photos, clip)
    naive_ips = naive(photos[: count // 2 if quick else count], clip, workdir)
    eager_ips, by_batch, dtype, compiled_ips = ceiling(clip, 64 if quick else 192)
    default = pipeline(folder, clip, workdir, "pipeline")
    best = pipeline(folder, clip, workdir, "pipeline_compiled", "--compile")
    ablations = {
        "fp32 instead of bf16": pipeline(folder, clip, workdir, "abl_fp32", dtype="float32"),
        "1 decode thread": pipeline(folder, clip, workdir, "abl_workers1", "--workers", "1"),
        "batch 8": pipeline(folder, clip, workdir, "abl_batch8", "--batch-size", "8"),
    }
    result = {
        "photos": count,
        "index_naive_ips": round(naive_ips, 2),
        "index_ceiling_ips": round(compiled_ips, 2),
        "index_pipeline_ips": best["images_per_s"],
        "pipeline_vs_naive": round(best["images_per_s"] / naive_ips, 2),
        "pipeline_vs_ceiling": round(best["images_per_s"] / compiled_ips, 3),
        "index_ceiling_uncompiled_ips": round(eager_ips, 2),
        "index_pipeline_uncompiled_ips": default["images_per_s"],
        "uncompiled_pipeline_vs_naive": round(default["images_per_s"] / naive_ips, 2),
        "uncompiled_pipeline_vs_ceiling": round(default["images_per_s"] / eager_ips, 3),
        "index_ceiling_by_batch": {str(k): round(v, 2) for k, v in by_batch.items()},
        "index_ceiling_dtype": dtype,
        "index_pipeline": best,
        "index_pipeline_uncompiled": default,
        "ablations": ablations,
        "decode_and_preprocess_ms": decoding,
    }

    def row(label: str, ips: float, ceiling_ips: float) -> list[str]:
        return [label, f"{ips:.1f}", f"{ips / naive_ips:.2f}×", f"{ips / ceiling_ips:.0%}"]

    table(
        f"Index throughput, {count} COCO-like 640×480 JPEGs, ViT-B/32 (random weights)",
        ["run", "images/s", "vs naive", "vs ceiling"],
        [
            row("(a) naive: 1 at a time, fp32, 1 add each", naive_ips, eager_ips),
            row(f"(b) ceiling: image tower alone, {dtype}, best batch", eager_ips, eager_ips),
            row(f"(b) ceiling, compiled, batch {BATCH}", compiled_ips, compiled_ips),
            row("(c) index_builder.py end to end", default["images_per_s"], eager_ips),
            row("(c) index_builder.py --compile", best["images_per_s"], compiled_ips),
        ]
        + [row(f"(c) with {name}", r["images_per_s"], eager_ips) for name, r in ablations.items()],
    )
    if DEVICE == "cuda":
        table(
            "GPU throughput next to the public anchor",
            ["run", "images/s"],
            [
                ["clip-retrieval, ViT-B/32, one A100 (reported)", CLIP_RETRIEVAL_A100_IPS],
                ["(b) this GPU, image tower alone, compiled", f"{compiled_ips:.0f}"],
                ["(c) this GPU, index_builder.py end to end", f"{best['images_per_s']:.0f}"],
            ],
        )
        result["clip_retrieval_a100_ips"] = CLIP_RETRIEVAL_A100_IPS
    table(
        "Decode + preprocess per 640×480 JPEG (one core)",
        ["JPEG decoding", "ms per photo"],
        [
            ["draft mode (DCT scaled to ≥ 224 px)", decoding["draft_ms"]],
            ["full size", decoding["full_ms"]],
        ],
    )
    return result
