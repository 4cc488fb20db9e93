"""The committed tiny CLIP fixture (tests/fixtures/tiny_clip) loads offline and knows its shapes.

Regenerate it with `python tests/fixtures/make_tiny_clip.py` (about a minute on one CPU core).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from tests.fixtures.shapes import LABELS, caption, draw

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_clip"
TRAIN_SEED = 0  # make_tiny_clip.py's default --seed; the drawings below use other seeds
SIZES = [(64, 64), (96, 72), (200, 150), (72, 96), (50, 80)]


def _embed(output: object) -> torch.Tensor:
    """get_*_features gives a tensor in transformers 4 and an output object in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope="module")
def clip() -> tuple[CLIPModel, CLIPProcessor]:
    return CLIPModel.from_pretrained(FIXTURE).eval(), CLIPProcessor.from_pretrained(FIXTURE)


@torch.no_grad()
def _image_embeds(clip: tuple[CLIPModel, CLIPProcessor], images: list) -> torch.Tensor:
    model, processor = clip
    inputs = processor(images=images, return_tensors="pt")
    return F.normalize(_embed(model.get_image_features(**inputs)), dim=-1)


@torch.no_grad()
def _text_embeds(clip: tuple[CLIPModel, CLIPProcessor], texts: list[str]) -> torch.Tensor:
    model, processor = clip
    inputs = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
    return F.normalize(_embed(model.get_text_features(**inputs)), dim=-1)


def test_fixture_is_small_and_float32() -> None:
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    model = CLIPModel.from_pretrained(FIXTURE)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.text_config.max_position_embeddings == 77
    assert model.config.vision_config.image_size == 32


def test_loads_through_every_processor_entry_point() -> None:
    assert isinstance(AutoProcessor.from_pretrained(FIXTURE), CLIPProcessor)
    for loader in (CLIPTokenizer, AutoTokenizer):
        tokenizer = loader.from_pretrained(FIXTURE)
        assert tokenizer.model_max_length == 77
    image_processor = CLIPImageProcessor.from_pretrained(FIXTURE)
    assert image_processor.size["shortest_edge"] == 32
    assert image_processor.crop_size == {"height": 32, "width": 32}
    assert image_processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert image_processor.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_tokenizer_handles_any_text(clip: tuple[CLIPModel, CLIPProcessor]) -> None:
    tokenizer = clip[1].tokenizer
    for word in ("a", "red", "circle", "triangle", "yellow", "photo", "dog", "beach"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    ids = tokenizer("a dog on a beach!!")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]  # nothing unknown mid-text (unk is eos)
    odd = tokenizer("Zebras à la café ☕ 123")["input_ids"]
    assert tokenizer.eos_token_id not in odd[1:-1]
    long_text = " ".join(f"word{i} zebra" for i in range(250))
    ids = tokenizer(long_text, truncation=True, max_length=77)["input_ids"]
    assert len(ids) == 77 and ids[-1] == tokenizer.eos_token_id
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 77


def test_big_photo_becomes_32px(clip: tuple[CLIPModel, CLIPProcessor]) -> None:
    image = draw("red", "circle", width=640, height=480, rng=random.Random(1))
    pixels = clip[1](images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)


def test_zero_shot_accuracy_on_fresh_drawings(clip: tuple[CLIPModel, CLIPProcessor]) -> None:
    rng = random.Random(TRAIN_SEED + 2024)
    truth = [rng.randrange(len(LABELS)) for _ in range(240)]
    images = [
        draw(*LABELS[k], width=SIZES[i % len(SIZES)][0], height=SIZES[i % len(SIZES)][1], rng=rng)
        for i, k in enumerate(truth)
    ]
    texts = _text_embeds(clip, [caption(*label) for label in LABELS])
    predicted = (_image_embeds(clip, images) @ texts.T).argmax(dim=1)
    accuracy = (predicted == torch.tensor(truth)).float().mean().item()
    assert accuracy >= 0.90, accuracy


def test_features_match_the_forward_pass(clip: tuple[CLIPModel, CLIPProcessor]) -> None:
    model, processor = clip
    image = draw("blue", "square", width=80, height=60, rng=random.Random(5))
    inputs = processor(text=["a blue square"], images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert torch.allclose(_image_embeds(clip, [image]), out.image_embeds, atol=1e-5)
    assert torch.allclose(_text_embeds(clip, ["a blue square"]), out.text_embeds, atol=1e-5)


def test_search_precision_on_a_small_index(clip: tuple[CLIPModel, CLIPProcessor]) -> None:
    rng = random.Random(TRAIN_SEED + 77)
    truth = [i % len(LABELS) for i in range(60)]
    rng.shuffle(truth)
    images = [
        draw(*LABELS[k], width=SIZES[i % len(SIZES)][0], height=SIZES[i % len(SIZES)][1], rng=rng)
        for i, k in enumerate(truth)
    ]
    index = _image_embeds(clip, images)
    query = _text_embeds(clip, ["a red circle"])[0]
    top5 = (index @ query).topk(5).indices.tolist()
    assert sum(LABELS[truth[j]] == ("red", "circle") for j in top5) >= 4
    phrased = _text_embeds(clip, ["a photo of a red circle"])[0]
    assert (
        sum(LABELS[truth[j]] == ("red", "circle") for j in (index @ phrased).topk(5).indices) >= 4
    )
    by_image = index @ index.T
    assert torch.equal(by_image.argmax(dim=1), torch.arange(60))  # each picture finds itself
