"""CLIP, SigLIP and SigLIP 2 through the one `DualEncoder`: each family's vectors equal the
reference Hugging Face call, the JPEG draft decode keeps them, other models are refused, and
a collection stays tied to the model that built it.

The models are random-weight, built here from each family's default config with small
towers but the family's own preprocessing (224 px images, CLIP's crop and mean/std or
SigLIP's squash and 0.5, 77 or 64 text positions), with their processors and offline
tokenizers, saved to a temporary directory and loaded by path as CLIP_MODEL would be.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoProcessor,
    BertConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPProcessor,
    CLIPTokenizer,
    GemmaTokenizer,
    PreTrainedTokenizerFast,
    Siglip2Config,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipProcessor,
)

from core.errors import ModelMismatch, ModelUnavailable
from core.images import decode_image
from core.models.encoder import DualEncoder
from core.search.service import SearchService
from core.store.database import Database
from core.store.records import ImageRecord
from tests.conftest import TINY_BLIP2, TINY_CLIP, make_settings
from tests.fixtures.shapes import LABELS, draw

TEXTS = [
    "a red circle",
    "a photo of a blue square",
    "ein roter Kreis",
    "un carré bleu",
    " ".join(["red"] * 200) + " circle",  # longer than any context: truncated
]
SIZES = [(224, 224), (300, 200), (200, 300), (640, 480), (500, 120), (64, 48)]
FAMILIES = ("clip", "siglip", "siglip2")
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
SMALL_HEADS = {"num_attention_heads": 2, "initializer_range": 0.2}
CLIP_TEXT = {"padding": True, "truncation": True}
"""How the HF docs call each family's processor on texts (CLIP: dynamic padding; SigLIP and
SigLIP 2: padded to the 64 positions the model was trained with)."""
SIGLIP_TEXT = {"padding": "max_length", "max_length": 64, "truncation": True}


@dataclass(frozen=True)
class Built:
    family: str
    path: Path
    reference_text_kwargs: dict


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    return {
        "clip": _save(root / "tiny-clip", *_clip(), CLIP_TEXT),
        "siglip": _save(root / "tiny-siglip", *_siglip(_word_tokenizer()), SIGLIP_TEXT),
        "siglip2": _save(root / "tiny-siglip2", *_siglip(_gemma_tokenizer()), SIGLIP_TEXT),
    }


@pytest.fixture(scope="module")
def encoders(built: dict[str, Built]) -> dict[str, DualEncoder]:
    out = {}
    for family, b in built.items():
        out[family] = DualEncoder(str(b.path), device="cpu", dtype="float32")
        out[family].load()
    return out


def _reference(b: Built) -> tuple:
    return AutoModel.from_pretrained(b.path).eval(), AutoProcessor.from_pretrained(b.path)


def _normalised(features: object) -> np.ndarray:
    return torch.nn.functional.normalize(features.pooler_output, dim=-1).numpy()


def pictures() -> list[Image.Image]:
    rng = random.Random(5)
    return [draw(*LABELS[i % 12], width=w, height=h, rng=rng) for i, (w, h) in enumerate(SIZES)]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected(family: str, encoders: dict[str, DualEncoder]) -> None:
    encoder = encoders[family]
    assert encoder.family == family
    assert encoder.multilingual is (family == "siglip2")  # Gemma tokenizer: multilingual
    assert encoder.input_size == 224
    assert encoder.dim == {"clip": 24, "siglip": 32, "siglip2": 32}[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_vectors_equal_the_reference_call(
    family: str, built: dict[str, Built], encoders: dict[str, DualEncoder]
) -> None:
    model, processor = _reference(built[family])
    kwargs = built[family].reference_text_kwargs
    with torch.no_grad():
        expected = _normalised(
            model.get_text_features(**processor(text=TEXTS, return_tensors="pt", **kwargs))
        )
    got = encoders[family].embed_texts(TEXTS, batch_size=2)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.max(got @ got.T - np.eye(len(TEXTS))) < 0.9999  # the texts are told apart


def test_siglip_texts_must_be_padded_to_the_full_context(
    built: dict[str, Built], encoders: dict[str, DualEncoder]
) -> None:
    """The test above has teeth: SigLIP with CLIP's padding would give other vectors."""
    model, processor = _reference(built["siglip"])
    with torch.no_grad():
        longest = _normalised(
            model.get_text_features(**processor(text=TEXTS[:2], padding=True, return_tensors="pt"))
        )
    got = encoders["siglip"].embed_texts(TEXTS[:2])
    assert np.min(np.sum(got * longest, axis=1)) < 0.9999


@pytest.mark.parametrize("family", FAMILIES)
def test_image_vectors_equal_the_reference_call(
    family: str, built: dict[str, Built], encoders: dict[str, DualEncoder]
) -> None:
    model, processor = _reference(built[family])
    images = pictures()
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = _normalised(model.get_image_features(**inputs))
    encoder = encoders[family]
    pixels = encoder.preprocess(images)
    assert pixels.shape == (len(images), 3, 224, 224)
    np.testing.assert_array_equal(pixels, inputs["pixel_values"].numpy())
    got = encoder.embed_images(images, batch_size=4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.max(got @ got.T - np.eye(len(images))) < 0.9999  # the pictures are told apart


def test_clip_crops_and_siglip_squashes(encoders: dict[str, DualEncoder]) -> None:
    """A wide picture: CLIP sees only its centre, SigLIP the whole of it, squashed."""
    wide = Image.new("RGB", (448, 224), "white")
    wide.paste((255, 0, 0), (0, 0, 112, 224))  # a red band on the left quarter
    clip = encoders["clip"].preprocess([wide])[0]
    siglip = encoders["siglip"].preprocess([wide])[0]
    assert clip[0, :, :].min() > 0.5  # cropped away: white only (CLIP's normalisation)
    np.testing.assert_allclose(siglip[:, 112, 20], [1.0, -1.0, -1.0], atol=0.01)  # red, 0.5
    np.testing.assert_allclose(siglip[:, 112, 200], [1.0, 1.0, 1.0], atol=0.01)  # white


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("size", "drafted"),
    [((640, 480), (320, 240)), ((1800, 500), (900, 250))],  # a COCO photo, a panorama
)
def test_jpeg_draft_decode_keeps_the_vector(
    family: str, size: tuple[int, int], drafted: tuple[int, int], encoders: dict[str, DualEncoder]
) -> None:
    """Draft decoding keeps BOTH sides at least the input size (1800×500 is decoded at 1/2,
    not 1/8): SigLIP squashes the whole picture, so its long side must not be undersampled
    either."""
    encoder = encoders[family]
    width, height = size
    picture = draw(*LABELS[4], width=width, height=height, rng=random.Random(3))
    noise = np.random.default_rng(0).integers(-5, 6, (height, width, 3))  # a photo's grain
    picture = Image.fromarray(np.clip(np.asarray(picture) + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    draft = decode_image(buffer.getvalue(), min_side=encoder.input_size).image
    full = decode_image(buffer.getvalue()).image
    assert draft.size == drafted and min(drafted) >= encoder.input_size and full.size == size
    a, b = encoder.embed_images([draft, full])
    assert float(a @ b) >= 0.9999


def test_multilingual_siglip_by_name(built: dict[str, Built], tmp_path: Path) -> None:
    named = tmp_path / "siglip-base-patch16-256-multilingual"
    named.symlink_to(built["siglip"].path, target_is_directory=True)
    encoder = DualEncoder(str(named), device="cpu", dtype="float32")
    assert (encoder.family, encoder.multilingual) == ("siglip", True)
    assert DualEncoder(str(TINY_CLIP), device="cpu").multilingual is False


def test_big_vocabulary_siglip_is_multilingual(tmp_path: Path) -> None:
    tiny = {"hidden_size": 4, "intermediate_size": 4, "num_hidden_layers": 1}
    config, processor = _siglip(_word_tokenizer(), vocab_size=250_000, small=tiny)
    encoder = DualEncoder(str(_save(tmp_path / "m", config, processor, {}).path), device="cpu")
    assert (encoder.family, encoder.multilingual) == ("siglip", True)


@pytest.mark.parametrize("kind", ["bert", "blip-2"])
def test_other_models_are_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    path = TINY_BLIP2
    if kind == "bert":
        path = tmp_path / "bert"
        BertConfig(**SMALL, **SMALL_HEADS).save_pretrained(path)
    with pytest.raises(ModelUnavailable) as caught:
        DualEncoder(str(path), device="cpu").load()
    assert str(caught.value) == (
        f"CLIP_MODEL {path} is a {kind} model: supported are CLIP, SigLIP and SigLIP 2 dual "
        "encoders"
    )


def test_siglip2_naflex_is_refused_clearly(tmp_path: Path) -> None:
    Siglip2Config().save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"NaFlex .* fixed-resolution SigLIP 2"):
        DualEncoder(str(tmp_path), device="cpu").load()


def test_a_missing_tokenizer_library_is_one_clear_line(
    built: dict[str, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sentencepiece(*args, **kwargs):
        raise ImportError("SiglipTokenizer requires the SentencePiece library but it was not found")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", no_sentencepiece)
    with pytest.raises(ModelUnavailable, match=r"SentencePiece.*pip install sentencepiece"):
        DualEncoder(str(built["siglip"].path), device="cpu").load()


def test_a_collection_stays_tied_to_its_model_across_families(
    tmp_path: Path, built: dict[str, Built], encoders: dict[str, DualEncoder]
) -> None:
    clip = make_settings(tmp_path, clip_model=str(built["clip"].path))
    siglip = make_settings(tmp_path, clip_model=str(built["siglip"].path))
    siglip2 = make_settings(tmp_path, clip_model=str(built["siglip2"].path))
    db = Database(clip)
    db.open(clip.collection, ImageRecord, model=clip.clip_model, dim=24, create=True)
    with pytest.raises(ModelMismatch, match=r"tiny-clip.* \(24-d vectors\).*tiny-siglip.*32-d"):
        SearchService.open(siglip, encoders["siglip"])
    db.open("siglip", ImageRecord, model=siglip.clip_model, dim=32, create=True)
    other = siglip2.model_copy(update={"collection": "siglip"})
    with pytest.raises(ModelMismatch, match="tiny-siglip2"):  # the same 32-d: still refused
        SearchService.open(other, encoders["siglip2"])
    same = siglip.model_copy(update={"collection": "siglip"})
    assert SearchService.open(same, encoders["siglip"]).encoder.family == "siglip"


# Building the tiny models.


def _save(path: Path, config, processor, text_kwargs: dict) -> Built:
    model = AutoModel.from_config(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Built(config.model_type, path, text_kwargs)


def _clip() -> tuple:
    tokenizer = CLIPTokenizer.from_pretrained(TINY_CLIP)
    config = CLIPConfig(
        text_config={
            **SMALL,
            **SMALL_HEADS,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,  # CLIP pools the EOS position
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**SMALL, **SMALL_HEADS},  # 224 px, patch 32: ViT-B/32's input
        projection_dim=24,
    )
    processor = CLIPProcessor(CLIPImageProcessor(), tokenizer)  # shortest side 224, crop 224
    return config, processor


def _siglip(tokenizer, vocab_size: int | None = None, small: dict = SMALL) -> tuple:
    """A SigLIP (a SentencePiece-like tokenizer) or fixed-resolution SigLIP 2 (a Gemma
    tokenizer): both are `SiglipModel`s; 224 px, patch 16, 64 text positions."""
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = SiglipConfig(
        text_config={**small, **SMALL_HEADS, **ids, "vocab_size": vocab_size or len(tokenizer)},
        vision_config={**small, **SMALL_HEADS},
    )
    return config, SiglipProcessor(SiglipImageProcessor(), tokenizer)


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, `</s>` appended, input_ids only: SiglipTokenizer's shape, offline."""
    words = sorted({w for text in TEXTS for w in text.lower().split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids"],
        model_max_length=64,
    )


def _gemma_tokenizer() -> GemmaTokenizer:
    """Gemma's BPE with single characters only (no merges): SigLIP 2's tokenizer, offline."""
    chars = sorted({c for text in TEXTS for c in text.replace(" ", "▁")} | {"▁"})
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate([*specials, *chars])}
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=64)
