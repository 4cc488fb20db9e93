from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from core.errors import ConfigError, ModelUnavailable
from core.models import encoder as encoder_module
from core.models.encoder import DualEncoder
from core.models.runtime import cpu_has_native_bf16, resolve_device, resolve_dtype
from tests.conftest import TINY_CLIP, in_hf_cache
from tests.fixtures.shapes import LABELS, caption, draw

TEXTS = ["a red circle", "a photo of a blue square", "yellow triangle", "a dog on a beach!!"]


def pictures(n: int = 8, seed: int = 7) -> list:
    rng = random.Random(seed)
    sizes = [(64, 64), (96, 72), (200, 150), (40, 90)]
    return [
        draw(*LABELS[i % 12], width=sizes[i % 4][0], height=sizes[i % 4][1], rng=rng)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def fp32() -> DualEncoder:
    encoder = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32")
    encoder.load()
    return encoder


@pytest.fixture(scope="module")
def reference() -> tuple[CLIPModel, CLIPProcessor]:
    return CLIPModel.from_pretrained(TINY_CLIP).eval(), CLIPProcessor.from_pretrained(TINY_CLIP)


def normalised(features: object) -> np.ndarray:
    tensor = features.pooler_output  # transformers 5: an output object, not a tensor
    return torch.nn.functional.normalize(tensor, dim=-1).numpy()


def test_text_embeddings_equal_the_reference_hf_call(fp32: DualEncoder, reference) -> None:
    model, processor = reference
    with torch.no_grad():
        expected = normalised(
            model.get_text_features(**processor(text=TEXTS, padding=True, return_tensors="pt"))
        )
    got = fp32.embed_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_image_embeddings_equal_the_reference_hf_call(fp32: DualEncoder, reference) -> None:
    model, processor = reference
    images = pictures()
    with torch.no_grad():
        expected = normalised(
            model.get_image_features(**processor(images=images, return_tensors="pt"))
        )
    got = fp32.embed_images(images, batch_size=3)  # batch boundaries do not matter
    assert got.dtype == np.float32 and got.shape == (len(images), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(fp32.embed_pixels(fp32.preprocess(images)), expected, atol=1e-5)


def test_vectors_are_unit_length(fp32: DualEncoder) -> None:
    for vectors in (fp32.embed_texts(TEXTS), fp32.embed_images(pictures())):
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_bfloat16_stays_close_to_float32(fp32: DualEncoder) -> None:
    bf16 = DualEncoder(str(TINY_CLIP), device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    images = pictures(24, seed=3)
    for a, b in [
        (fp32.embed_images(images), bf16.embed_images(images)),
        (fp32.embed_texts(TEXTS), bf16.embed_texts(TEXTS)),
    ]:
        assert b.dtype == np.float32
        cosines = np.sum(a * b, axis=1)
        assert cosines.min() >= 0.99, cosines


def test_long_text_is_truncated_to_the_context(fp32: DualEncoder) -> None:
    words = " ".join(["red"] * 600)
    long_text, prefix = "a red circle " + words, "a red circle " + " ".join(["red"] * 72)
    long_vec, prefix_vec = fp32.embed_texts([long_text, prefix])
    assert prefix_vec @ long_vec == pytest.approx(1.0, abs=1e-5)  # 77 tokens: BOS + 75 + EOS


def test_empty_batches(fp32: DualEncoder) -> None:
    assert fp32.embed_texts([]).shape == (0, 32)
    assert fp32.embed_images([]).shape == (0, 32)


def test_input_size_and_dim_come_from_the_model(fp32: DualEncoder) -> None:
    assert (fp32.dim, fp32.input_size) == (32, 32)


def test_semantics_survive_the_encoder(fp32: DualEncoder) -> None:
    captions = [caption(c, s) for c, s in LABELS]
    texts = fp32.embed_texts(captions)
    rng = random.Random(99)
    labels = [LABELS[i % 12] for i in range(48)]
    images = fp32.embed_images([draw(c, s, width=120, height=90, rng=rng) for c, s in labels])
    predicted = np.argmax(images @ texts.T, axis=1)
    accuracy = np.mean(
        [captions[p] == caption(*label) for p, label in zip(predicted, labels, strict=True)]
    )
    assert accuracy >= 0.9


def test_loading_is_lazy_and_happens_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real = encoder_module.load_streamed  # the weights are streamed into the model (from_config)

    def counting(*args, **kwargs):
        loads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_module, "load_streamed", counting)
    encoder = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32")
    assert not encoder.loaded and loads == []
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(encoder.embed_texts(["a red circle"])))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(results) == 6
    for r in results:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_concurrent_calls_from_threads_are_correct(fp32: DualEncoder) -> None:
    expected = {t: fp32.embed_texts([t])[0] for t in TEXTS}
    got: dict[str, np.ndarray] = {}

    def work(text: str) -> None:
        for _ in range(5):
            got[text] = fp32.embed_texts([text])[0]

    threads = [threading.Thread(target=work, args=(t,)) for t in TEXTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for text in TEXTS:
        np.testing.assert_allclose(got[text], expected[text], atol=1e-6)


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        DualEncoder("nobody/no-such-clip-model", device="cpu").load()
    message = str(caught.value)
    assert "nobody/no-such-clip-model" in message and "HF_HUB_OFFLINE" in message
    assert "hf download" in message
    with pytest.raises(ModelUnavailable, match=r"which has no config\.json"):
        DualEncoder(str(tmp_path), device="cpu").load()


def test_close_frees_the_weights_and_load_opens_them_again() -> None:
    encoder = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32")
    before = encoder.embed_texts(TEXTS)
    encoder.close()
    assert not encoder.loaded
    with pytest.raises(ModelUnavailable, match="is closed"):
        encoder.embed_texts(TEXTS)  # no silent reload behind the caller's back
    encoder.load()
    assert encoder.loaded
    np.testing.assert_array_equal(encoder.embed_texts(TEXTS), before)


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigError, match="DEVICE=cuda"):
            resolve_device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    expected_cpu = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == expected_cpu
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16


@pytest.mark.real_models
@pytest.mark.skipif(
    not in_hf_cache("openai/clip-vit-base-patch32"),
    reason="openai/clip-vit-base-patch32 not in the HF cache",
)
def test_real_default_model_matches_the_reference() -> None:
    name = "openai/clip-vit-base-patch32"
    encoder = DualEncoder(name, device="cpu", dtype="float32")
    model, processor = CLIPModel.from_pretrained(name).eval(), CLIPProcessor.from_pretrained(name)
    images = pictures(2)
    with torch.no_grad():
        expected = normalised(
            model.get_image_features(**processor(images=images, return_tensors="pt"))
        )
    np.testing.assert_allclose(encoder.embed_images(images), expected, atol=1e-5)
    assert (encoder.dim, encoder.input_size) == (512, 224)


def counting_compile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make torch.compile's result record the batch size of each call it runs: the proof
    that the compiled function, not the eager model, made the vectors."""
    real = torch.compile
    batches: list[int] = []

    def compile_and_count(fn, *args, **kwargs):
        compiled = real(fn, *args, **kwargs)

        def run(*a, **kw):
            batches.append(len(kw["pixel_values"]))
            return compiled(*a, **kw)

        return run

    monkeypatch.setattr(torch, "compile", compile_and_count)
    return batches


def test_compiled_image_tower_gives_the_same_vectors(
    fp32: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = counting_compile(monkeypatch)
    compiled = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32")
    compiled.compile(batch_size=4)
    warm_up = len(batches)
    assert warm_up >= 1  # compile() ran the compiled function once, to compile it now
    images = pictures(6)  # a full batch of 4, then 2 padded to 4
    np.testing.assert_allclose(
        compiled.embed_images(images, batch_size=4), fp32.embed_images(images), atol=1e-5
    )
    assert batches[warm_up:] == [4, 4]  # both batches ran compiled, at the one compiled shape


def test_a_failing_compile_falls_back_to_eager(
    fp32: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def broken(*args, **kwargs):
        tries.append(len(kwargs["pixel_values"]))
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn: broken)
    encoder = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32")
    encoder.compile(batch_size=4)
    assert len(tries) == 1  # the compiled function was tried once, then dropped
    for _ in range(2):
        np.testing.assert_allclose(
            encoder.embed_images(pictures(3)), fp32.embed_images(pictures(3)), atol=1e-5
        )
    assert len(tries) == 1  # eager from then on: it is not tried again
