"""The committed tiny SigLIP fixture (tests/fixtures/tiny_siglip) loads offline and knows shapes.

Regenerate it with `python tests/fixtures/make_tiny_siglip.py` (about a minute on one CPU core).
It is loaded here only through the Auto classes, as the encoder loads a real SigLIP checkpoint.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, SiglipModel, SiglipProcessor

from tests.fixtures.shapes import LABELS, caption, draw

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_siglip"
TRAIN_SEED = 0  # make_tiny_siglip.py's default --seed; the drawings below use other seeds
SIZES = [(64, 64), (96, 72), (200, 150), (72, 96), (50, 80), (640, 480)]
MAX_LENGTH = 16

Loaded = tuple[SiglipModel, SiglipProcessor]


@pytest.fixture(scope="module")
def siglip() -> Loaded:
    return AutoModel.from_pretrained(FIXTURE).eval(), AutoProcessor.from_pretrained(FIXTURE)


@torch.no_grad()
def _image_embeds(siglip: Loaded, images: list) -> torch.Tensor:
    model, processor = siglip
    inputs = processor(images=images, return_tensors="pt")
    return F.normalize(model.get_image_features(**inputs).pooler_output, dim=-1)


@torch.no_grad()
def _text_embeds(siglip: Loaded, texts: list[str]) -> torch.Tensor:
    model, processor = siglip
    inputs = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
    return F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)


def _drawings(seed: int, truth: list[int]) -> list[Image.Image]:
    rng = random.Random(seed)
    return [
        draw(*LABELS[k], width=SIZES[i % len(SIZES)][0], height=SIZES[i % len(SIZES)][1], rng=rng)
        for i, k in enumerate(truth)
    ]


def test_fixture_is_small_float32_siglip() -> None:
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 1.5 * 1024 * 1024
    model = AutoModel.from_pretrained(FIXTURE)
    assert isinstance(model, SiglipModel)
    assert model.config.model_type == "siglip"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.text_config.max_position_embeddings == MAX_LENGTH
    assert model.config.vision_config.image_size == 32
    assert model.config.vision_config.patch_size == 8
    assert hasattr(model, "logit_bias") and not hasattr(model, "text_projection")


def test_processor_pads_to_max_length(siglip: Loaded) -> None:
    processor = siglip[1]
    assert isinstance(processor, SiglipProcessor)
    tokenizer = processor.tokenizer
    assert AutoTokenizer.from_pretrained(FIXTURE).model_max_length == MAX_LENGTH
    assert tokenizer.model_max_length == MAX_LENGTH
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as in the real SigLIP vocabulary
    ids = processor(text=["a red circle", "a photo of a big blue square"], padding="max_length")
    for row in ids["input_ids"]:
        assert len(row) == MAX_LENGTH
        assert row[-1] == tokenizer.pad_token_id  # the text tower pools this last position
    first = ids["input_ids"][0]
    words = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert first[:4] == [*words, tokenizer.eos_token_id]
    long_text = " ".join(f"word{i} zebra red" for i in range(50))
    ids = processor(text=[long_text], padding="max_length", truncation=True)["input_ids"][0]
    assert len(ids) == MAX_LENGTH and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_words_case_and_punctuation(siglip: Loaded) -> None:
    tokenizer = siglip[1].tokenizer
    for word in ("a", "red", "circle", "triangle", "yellow", "photo", "dog", "beach"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    plain = tokenizer("a red circle")["input_ids"]
    assert tokenizer("A RED circle!!")["input_ids"] == plain
    odd = tokenizer("Zebras à la café ☕ 123")["input_ids"]
    assert odd[-1] == tokenizer.eos_token_id
    assert set(odd[:-1]) == {tokenizer.unk_token_id}


def test_image_processor_resizes_without_crop(siglip: Loaded) -> None:
    image_processor = siglip[1].image_processor
    assert image_processor.size == {"height": 32, "width": 32}
    assert not getattr(image_processor, "do_center_crop", False)
    assert image_processor.image_mean == pytest.approx([0.5, 0.5, 0.5])
    assert image_processor.image_std == pytest.approx([0.5, 0.5, 0.5])
    photo = Image.new("RGB", (640, 480), (128, 128, 128))
    photo.paste((255, 0, 0), (0, 0, 40, 480))  # a red band at the left edge
    pixels = siglip[1](images=photo, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    # A centre crop (CLIP) would cut the band off; the plain resize keeps it, squashed.
    assert pixels[0, 0, :, 0].min() > 0.9 and pixels[0, 1, :, 0].max() < -0.9
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_zero_shot_accuracy_on_fresh_drawings(siglip: Loaded) -> None:
    rng = random.Random(TRAIN_SEED + 2024)
    truth = [rng.randrange(len(LABELS)) for _ in range(240)]
    images = _drawings(TRAIN_SEED + 2025, truth)
    texts = _text_embeds(siglip, [caption(*label) for label in LABELS])
    predicted = (_image_embeds(siglip, images) @ texts.T).argmax(dim=1)
    accuracy = (predicted == torch.tensor(truth)).float().mean().item()
    assert accuracy >= 0.90, accuracy


def test_features_match_the_forward_pass(siglip: Loaded) -> None:
    model, processor = siglip
    image = draw("blue", "square", width=80, height=60, rng=random.Random(5))
    inputs = processor(
        text=["a blue square", "a red circle"],
        images=image,
        padding="max_length",
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model(**inputs)
    assert torch.allclose(_image_embeds(siglip, [image]), out.image_embeds, atol=1e-5)
    texts = _text_embeds(siglip, ["a blue square", "a red circle"])
    assert torch.allclose(texts, out.text_embeds, atol=1e-5)
    probs = torch.sigmoid(out.logits_per_image)[0]  # SigLIP's own scoring: a match or not
    assert probs[0] > 0.5 > probs[1]


def test_search_precision_on_a_small_index(siglip: Loaded) -> None:
    rng = random.Random(TRAIN_SEED + 77)
    truth = [i % len(LABELS) for i in range(60)]
    rng.shuffle(truth)
    index = _image_embeds(siglip, _drawings(TRAIN_SEED + 78, truth))
    for query in ("a red circle", "a photo of a red circle", "red circle"):
        top5 = (index @ _text_embeds(siglip, [query])[0]).topk(5).indices.tolist()
        assert sum(LABELS[truth[j]] == ("red", "circle") for j in top5) >= 4, query
    by_image = index @ index.T
    assert torch.equal(by_image.argmax(dim=1), torch.arange(60))  # each picture finds itself
