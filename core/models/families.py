"""The dual encoders CLIP_MODEL may name, and how each family is told apart and fed.

`core.models.encoder.DualEncoder` loads any of them with `AutoModel` + `AutoProcessor`; this
module decides, from the loaded config and tokenizer, which family a checkpoint is and what
that family's processor expects, so the encoder's vectors equal the reference call
(`model.get_*_features(**processor(...)).pooler_output`, normalised):

- `clip`: `model_type == "clip"` (openai and LAION checkpoints in HF format). Texts padded
  to the longest and truncated to 77 tokens (pooling reads the EOS token); images resized
  on the shortest side, centre-cropped, CLIP's mean/std.
- `siglip`: `model_type == "siglip"` with a SentencePiece (or any non-Gemma) tokenizer.
  Texts padded to max_length (64) and truncated (pooling reads the last position; trained
  so); images squashed to the square size without a crop, mean = std = 0.5.
- `siglip2`: `model_type == "siglip"` with a Gemma tokenizer (or Gemma's 256,000-piece
  vocabulary): the fixed-resolution SigLIP 2 checkpoints (google/siglip2-base-patch16-224,
  ...), which are `SiglipModel`s. Fed as SigLIP.

`multilingual`: SigLIP 2 (Gemma), or "multilingual" in CLIP_MODEL, or a text vocabulary of
at least 250,000 pieces (google/siglip-base-patch16-256-multilingual); CLIP and English
SigLIP are not.

The image settings (sizes, crop, mean/std, resampling) are never written here: they are the
checkpoint's own image processor's. SigLIP 2 "NaFlex" checkpoints (`model_type ==
"siglip2"`, variable resolution with patch masks) are refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ModelUnavailable

CLIP, SIGLIP, SIGLIP2 = "clip", "siglip", "siglip2"
SUPPORTED = "CLIP, SigLIP and SigLIP 2 dual encoders"
MULTILINGUAL_VOCAB = 250_000
"""A text vocabulary at least this large is multilingual: google's multilingual SigLIP has
250,000 pieces and Gemma (SigLIP 2) 256,000; English SigLIP has 32,000 and CLIP 49,408."""
GEMMA_VOCAB = 256_000
"""Gemma's vocabulary: a SigLIP text tower of this size is SigLIP 2 even if its tokenizer
loaded under another class name."""


@dataclass(frozen=True)
class Family:
    """What the encoder needs to know about a checkpoint's family."""

    name: str
    """"clip", "siglip" or "siglip2"."""
    text_padding: bool | str
    """The tokenizer's `padding`: True (to the longest) for CLIP, whose pooling reads the
    EOS token; "max_length" for SigLIP, whose pooling reads the last position and which was
    trained on texts padded to 64 tokens."""
    max_text_tokens: int
    """The text tower's positions (CLIP 77, SigLIP 64): longer texts are truncated."""
    input_size: int
    """The side of the square picture the image tower sees (CLIP: the crop size; SigLIP: the
    size it squashes to). Decoding with `min_side=input_size` keeps both sides at least this
    large, so the processor only ever shrinks, as it does on the full picture."""
    dim: int
    """The embedding dimension."""
    multilingual: bool


def check_model_type(name: str, config: Any) -> None:
    """Refuse a checkpoint that is not a supported dual encoder, in one line."""
    model_type = config.model_type or "unknown"
    if model_type == "siglip2":
        raise ModelUnavailable(
            f"CLIP_MODEL {name} is a SigLIP 2 NaFlex (variable resolution) model, which is not "
            "supported: use a fixed-resolution SigLIP 2 checkpoint such as "
            "google/siglip2-base-patch16-224"
        )
    if model_type not in (CLIP, SIGLIP):
        raise ModelUnavailable(
            f"CLIP_MODEL {name} is a {model_type} model: supported are {SUPPORTED}"
        )


def detect(name: str, config: Any, processor: Any) -> Family:
    """The family of a loaded checkpoint (`check_model_type` passed) and its settings."""
    tokenizer, images = processor.tokenizer, processor.image_processor
    text = config.text_config
    if config.model_type == CLIP:
        family, padding, dim = CLIP, True, int(config.projection_dim)
    else:
        gemma = "gemma" in type(tokenizer).__name__.lower() or _vocab(text) == GEMMA_VOCAB
        family, padding, dim = (SIGLIP2 if gemma else SIGLIP), "max_length", _siglip_dim(config)
    multilingual = (
        family == SIGLIP2 or "multilingual" in name.lower() or _vocab(text) >= MULTILINGUAL_VOCAB
    )
    return Family(
        name=family,
        text_padding=padding,
        max_text_tokens=int(text.max_position_embeddings),
        input_size=_input_size(images),
        dim=dim,
        multilingual=multilingual,
    )


def _vocab(text_config: Any) -> int:
    return int(text_config.vocab_size or 0)


def _siglip_dim(config: Any) -> int:
    """SigLIP has no projection_dim: the text head maps to `projection_size` (by default the
    text hidden size), the image head keeps the vision hidden size; they must agree."""
    text_dim = int(config.text_config.projection_size)
    image_dim = int(config.vision_config.hidden_size)
    if text_dim != image_dim:
        raise ModelUnavailable(
            f"CLIP_MODEL's SigLIP text ({text_dim}-d) and image ({image_dim}-d) embeddings "
            "differ in size: not a dual encoder this search can use"
        )
    return text_dim


def _input_size(image_processor: Any) -> int:
    """The square side the image tower sees, from the image processor's own settings."""
    crops = getattr(image_processor, "do_center_crop", False)
    size = image_processor.crop_size if crops else image_processor.size
    height, width = _size_value(size, "height"), _size_value(size, "width")
    if height and width:
        return max(height, width)
    edge = _size_value(size, "shortest_edge")
    if edge:
        return edge
    raise ModelUnavailable(f"CLIP_MODEL's image processor has no fixed input size ({size})")


def _size_value(size: Any, key: str) -> int | None:
    """`size[key]` of a transformers `SizeDict`; None when unset."""
    value = size.get(key)
    return int(value) if value else None
