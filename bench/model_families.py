"""Picking a model with numbers: each supported family's cost on this machine, side by side in
one run, next to its published COCO retrieval quality.

The models are the real checkpoints' architectures with random weights (the weights cannot be
downloaded here): CLIP ViT-B/32 and ViT-B/16 (CLIPConfig), SigLIP B/16-224 (SiglipConfig's
defaults) and SigLIP 2 B/16-224 (the fixed-resolution SigLIP 2 checkpoints are SiglipModel
with Gemma's 256k vocabulary). Each goes through the project's DualEncoder in the dtype
DTYPE=auto picks. Speed does not depend on the weights' values; quality does, so the
quality column is the published COCO 5k text→image R@1, not a measurement.

- index images/s: decode (JPEG draft) → preprocess → embed, 640×480 photos, batches of 32;
- text query p50: one query through the tokenizer and the text tower.
CLIP uses its real BPE tokenizer; the SigLIP stand-ins use a word-level tokenizer padded to
the same 64 positions the real SentencePiece/Gemma tokenizers pad to (the text tower's cost
is the same; tokenizing itself costs little beside it either way).

`measure` returns a `ModelFamilies`, which renders its JSON and its table.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import CACHE, ROOT, make_photos, vit_b32_dir
from bench.report import document, table

QUERY = "a dog running on a beach"
BATCH = 32


@dataclass(frozen=True)
class Family:
    label: str
    clip_model: str
    """The CLIP_MODEL value of the real checkpoint."""
    coco_r1: str
    """Published COCO 5k text→image R@1 (source in the README)."""
    build: str
    """Which builder below makes its random-weight stand-in."""


FAMILIES = [
    Family("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "30.4", "clip32"),
    Family("CLIP ViT-B/16", "openai/clip-vit-base-patch16", "33.1", "clip16"),
    Family("SigLIP B/16-224", "google/siglip-base-patch16-224", "47.8", "siglip"),
    Family("SigLIP 2 B/16-224", "google/siglip2-base-patch16-224", "52.1", "siglip2"),
]


@dataclass(frozen=True)
class Cost:
    """One model's cost here (random weights, the real shapes)."""

    images_per_s: float
    text_p50_ms: float
    params_m: float
    family: str
    dtype: str


@dataclass(frozen=True)
class ModelFamilies:
    """What `measure` found: each family's cost, in `FAMILIES`' order."""

    costs: dict[str, Cost]
    """By `Family.build`."""

    def to_json(self) -> dict:
        return {"model_families": {build: asdict(cost) for build, cost in self.costs.items()}}

    def to_markdown(self) -> str:
        rows = [_row(family, self.costs[family.build]) for family in FAMILIES]
        return document(
            table(
                "Model families: cost here (random weights, real shapes) and published COCO "
                "quality",
                [
                    "model",
                    "CLIP_MODEL",
                    "weights (fp32)",
                    "index images/s",
                    "text query p50 ms",
                    "COCO T→I R@1 (published)",
                    "family, dtype",
                ],
                rows,
            )
        )


def _row(family: Family, cost: Cost) -> list[object]:
    return [
        family.label,
        f"`{family.clip_model}`",
        f"{cost.params_m * 4 / 1e3:.2f} GB",
        cost.images_per_s,
        cost.text_p50_ms,
        family.coco_r1,
        f"{cost.family}, {cost.dtype}",
    ]


def measure(quick: bool, workdir: Path) -> ModelFamilies:
    """Every family's cost on the same photos, one after the other."""
    photos = make_photos(workdir / "photos", 32 if quick else 96, seed=3)
    return ModelFamilies(
        {family.build: measure_model(model_dir(family.build), photos) for family in FAMILIES}
    )


def measure_model(path: Path, photos: list[Path]) -> Cost:
    """One model through DualEncoder: index images/s and text query p50, after a warm-up."""
    from core.images import load_image
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(path), device="cpu", dtype="auto")
    encoder.load()
    size = encoder.input_size
    encoder.embed_images([load_image(photos[0], min_side=size)] * BATCH, BATCH)
    started = time.perf_counter()
    for start in range(0, len(photos), BATCH):
        images = [load_image(p, min_side=size) for p in photos[start : start + BATCH]]
        encoder.embed_pixels(encoder.preprocess(images), BATCH)
    images_per_s = len(photos) / (time.perf_counter() - started)
    encoder.embed_texts([QUERY])
    text_ms = statistics.median(_timed_ms(encoder.embed_texts, [QUERY]) for _ in range(21))
    params = sum(p.numel() for p in encoder._model().model.parameters())
    return Cost(
        images_per_s=round(images_per_s, 1),
        text_p50_ms=round(text_ms, 1),
        params_m=round(params / 1e6, 1),
        family=encoder.family,
        dtype=str(encoder.dtype).removeprefix("torch."),
    )


def _timed_ms(call, *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return (time.perf_counter() - started) * 1000


def model_dir(kind: str) -> Path:
    """The random-weight stand-in of a family, saved once in HF format (bench/.cache)."""
    if kind == "clip32":
        return vit_b32_dir().path
    path = CACHE / f"family-{kind}-random"
    if (path / "config.json").exists():
        return path
    import torch

    torch.manual_seed(0)
    if kind == "clip16":
        model, processor = _clip16()
    else:
        model, processor = _siglip(vocab=256_000 if kind == "siglip2" else 32_000)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _clip16():
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    b32 = vit_b32_dir().path
    config = CLIPConfig.from_pretrained(b32)
    config.vision_config.patch_size = 16
    return CLIPModel(config).eval(), CLIPProcessor.from_pretrained(b32)


def _siglip(vocab: int):
    """SiglipConfig's defaults are the B/16-224 shapes; SigLIP 2's fixed-resolution
    checkpoints are the same model with Gemma's 256k vocabulary."""
    from transformers import (
        AutoTokenizer,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    config = SiglipConfig()
    config.text_config.vocab_size = vocab
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tiny_siglip")
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    image_processor = SiglipImageProcessor(size={"height": 224, "width": 224})
    return SiglipModel(config).eval(), SiglipProcessor(image_processor, tokenizer)
