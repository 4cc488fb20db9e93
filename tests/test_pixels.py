"""core.models.pixels: the exact one-pass preprocessing (queries) and the index builder's
batched torch path, against the processors of the CLIP and SigLIP fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from core.models import pixels
from core.models.encoder import DualEncoder
from core.models.pixels import (
    MAX_ASPECT,
    MAX_LEVEL_DIFFERENCE,
    BatchPixels,
    ExactPixels,
    Preprocessing,
)
from tests.conftest import TINY_CLIP, TINY_SIGLIP
from tests.fixtures.shapes import LABELS, draw

MODELS = {"clip": TINY_CLIP, "siglip": TINY_SIGLIP}
SIZES = [(64, 64), (96, 72), (200, 150), (40, 90), (17, 23), (150, 50), (32, 32)]
"""Shrunk, enlarged, portrait, landscape, 3:1 and already the tiny models' size."""
COCO_SIZES = [(320, 240), (640, 427), (427, 640), (500, 375)]


def photos(seed: int = 3, sizes: list[tuple[int, int]] = SIZES) -> list[Image.Image]:
    """Shapes with sensor noise (texture for the resampling filters), at `sizes`."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    out = []
    for n, (width, height) in enumerate(sizes):
        image = draw(*LABELS[n % 12], width=width, height=height, rng=rng)
        grain = noise.normal(0, 12, (height, width, 3))
        out.append(Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8)))
    return out


def encoder(model: str, dtype: str = "float32") -> DualEncoder:
    built = DualEncoder(str(MODELS[model]), device="cpu", dtype=dtype)
    built.load()
    return built


def preprocessing(built: DualEncoder) -> Preprocessing:
    """The pixel paths the encoder chose when it loaded."""
    return built._model().pixels


def processor_of(built: DualEncoder):
    return preprocessing(built).processor


@pytest.mark.parametrize("model", MODELS)
def test_exact_pixels_are_the_processors_bit_for_bit(model: str) -> None:
    built = encoder(model)
    assert isinstance(preprocessing(built).exact, ExactPixels)
    images = photos()
    expected = processor_of(built)(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(built.preprocess(images), expected)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", MODELS)
def test_batch_pixels_stay_within_a_few_levels_of_the_processors(model: str, dtype: str) -> None:
    built = encoder(model, dtype)
    batch = preprocessing(built).batch
    assert isinstance(batch, BatchPixels)
    images = photos()
    prepared = [built.prepare(image) for image in images]
    assert all(p.dtype == np.uint8 and p.shape[2] == 3 for p in prepared)  # cheap for workers
    got = built.batch_pixels(prepared)
    assert got.dtype == built.dtype and got.shape == built.preprocess(images).shape
    # In uint8 levels, before normalising: torch's resize against Pillow's.
    exact = batch.exact
    levels = []
    for image, rgb in zip(images, prepared, strict=True):
        ours = batch.resize(rgb).numpy().transpose(1, 2, 0).astype(np.int16)
        levels.append(np.abs(ours - exact.resized(image)))
    assert max(d.max() for d in levels) <= MAX_LEVEL_DIFFERENCE
    assert np.mean([d.mean() for d in levels]) < 0.1  # nearly all pixels the same
    assert any(d.max() > 0 for d in levels)  # a different resampler: not vacuous
    # After normalising: the same bound, one level being the table's step per channel.
    step = np.max(np.diff(exact.table, axis=1))
    rounding = 0.02 if dtype == "bfloat16" else 1e-6
    np.testing.assert_allclose(
        got.float().numpy(),
        built.preprocess(images),
        atol=MAX_LEVEL_DIFFERENCE * step + rounding,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", MODELS)
def test_normalisation_is_exactly_the_processors_by_either_path(model: str, dtype: str) -> None:
    """Pictures already at the model's size are not resampled: then the batch must be the
    processor's pixels in the model's dtype, bit for bit, by the affine map when it is
    exact and by the table either way."""
    built = encoder(model, dtype)
    batch = preprocessing(built).batch
    rng = np.random.default_rng(1)
    width, height = batch.exact.out
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)) for _ in "ab"]
    expected = torch.from_numpy(built.preprocess(images)).to(built.dtype)
    prepared = [built.prepare(image) for image in images]
    assert torch.equal(built.batch_pixels(prepared), expected)
    natural = batch.affine
    batch.affine = False  # the table (a gather)
    try:
        assert torch.equal(built.batch_pixels(prepared), expected)
    finally:
        batch.affine = natural


def test_on_photo_sized_pictures_batch_pixels_differ_by_one_level_at_most() -> None:
    """CLIP's own 224-pixel geometry (the default processor's), on COCO's sizes."""
    exact = ExactPixels.for_processor(CLIPImageProcessor())
    batch = BatchPixels.for_pixels(exact, torch.bfloat16)
    differing = []
    for image in photos(seed=4, sizes=COCO_SIZES):
        ours = batch.resize(batch.prepare(image)).numpy().transpose(1, 2, 0).astype(np.int16)
        difference = np.abs(ours - exact.resized(image))
        assert difference.max() <= 1
        differing.append((difference > 0).mean())
    assert 0 < max(differing) < 0.01


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_resizes_pictures_of_one_size_together_in_their_order(model: str) -> None:
    built = encoder(model, "bfloat16")
    images = photos()
    mixed = [images[n] for n in (2, 0, 2, 3, 0, 2, 5)]  # three sizes, interleaved
    prepared = [built.prepare(image) for image in mixed]
    together = built.batch_pixels(prepared)
    for n, one in enumerate(prepared):
        assert torch.equal(together[n], built.batch_pixels([one])[0]), n


def test_bfloat16_clip_uses_the_affine_map_and_float32_the_table() -> None:
    bf16, fp32 = encoder("clip", "bfloat16"), encoder("clip", "float32")
    assert preprocessing(bf16).batch.affine  # the fast path of the index builder
    assert not preprocessing(fp32).batch.affine  # float32 rounds differently


@pytest.mark.parametrize("model", MODELS)
def test_the_builders_vectors_are_the_queries_up_to_resampling(model: str) -> None:
    built = encoder(model)
    images = photos(seed=11)
    exact = built.embed_images(images)
    batched = built.embed_pixels(built.batch_pixels([built.prepare(i) for i in images]), 3)
    assert batched.shape == exact.shape
    assert np.sum(exact * batched, axis=1).min() > 0.999


def test_without_a_fast_path_workers_hand_over_the_processors_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ExactPixels, "for_processor", classmethod(lambda cls, p: None))
    built = encoder("clip")
    images = photos()
    prepared = [built.prepare(image) for image in images]
    assert preprocessing(built).batch is None
    assert all(p.dtype == np.float32 for p in prepared)
    expected = processor_of(built)(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(np.stack(prepared), expected)
    np.testing.assert_array_equal(
        built.embed_pixels(built.batch_pixels(prepared)), built.embed_images(images)
    )


def test_a_batch_pixels_that_strays_from_pillow_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pixels, "MAX_LEVEL_DIFFERENCE", -1)  # any difference is too much
    built = encoder("clip")
    assert preprocessing(built).batch is None
    assert built.prepare(photos()[0]).dtype == np.float32


class Spy:
    """Records the largest picture any resampler was asked to make."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.largest = 0
        resize, interpolate = Image.Image.resize, torch.nn.functional.interpolate

        def spied_resize(image, size, *args, **kwargs):
            self.largest = max(self.largest, *size)
            return resize(image, size, *args, **kwargs)

        def spied_interpolate(tensor, size=None, *args, **kwargs):
            self.largest = max(self.largest, *size)
            return interpolate(tensor, size, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "resize", spied_resize)
        monkeypatch.setattr(torch.nn.functional, "interpolate", spied_interpolate)


def test_an_elongated_picture_is_cut_to_its_centre_before_resizing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 60,000×1 picture is small (60,000 pixels) but the processor would resize it to
    1,920,000×32 (184 MB here, 9 GB for CLIP's 224) to keep the middle; cut first, every
    path stays within MAX_ASPECT times the model's side and sees the same centre."""
    built = encoder("clip")
    rng = np.random.default_rng(5)
    long = Image.fromarray(rng.integers(0, 256, (1, 60_000, 3), np.uint8))
    tall = long.transpose(Image.Transpose.ROTATE_90)
    centre = long.crop(((60_000 - MAX_ASPECT) // 2, 0, (60_000 + MAX_ASPECT) // 2, 1))
    spy = Spy(monkeypatch)
    exact = built.preprocess([long])
    batched = built.batch_pixels([built.prepare(long), built.prepare(tall)])
    side = built.input_size
    assert 0 < spy.largest <= MAX_ASPECT * side
    np.testing.assert_array_equal(exact, built.preprocess([centre]))
    assert torch.equal(batched[0], built.batch_pixels([built.prepare(centre)])[0])
    assert batched.shape == (2, 3, side, side)


def test_the_processors_own_path_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ExactPixels, "for_processor", classmethod(lambda cls, p: None))
    built = encoder("clip")
    rng = np.random.default_rng(6)
    long = Image.fromarray(rng.integers(0, 256, (20_000, 3, 3), np.uint8))
    centre = long.crop((0, (20_000 - 3 * MAX_ASPECT) // 2, 3, (20_000 + 3 * MAX_ASPECT) // 2))
    spy = Spy(monkeypatch)
    got = built.preprocess([long])
    assert 0 < spy.largest <= MAX_ASPECT * built.input_size
    np.testing.assert_array_equal(got, built.preprocess([centre]))


def test_a_squashing_model_keeps_the_whole_elongated_picture() -> None:
    """SigLIP squashes to its square: nothing is cut, and nothing grows."""
    built = encoder("siglip")
    rng = np.random.default_rng(7)
    long = Image.fromarray(rng.integers(0, 256, (2, 5_000, 3), np.uint8))
    expected = processor_of(built)(images=[long], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(built.preprocess([long]), expected)
