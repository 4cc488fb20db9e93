"""The dual encoder (CLIP, SigLIP or SigLIP 2): texts and images → L2-normalised float32
vectors in one shared space.

The vectors are exactly what the reference Hugging Face call gives
(`model.get_text_features(**processor(text=...))`, `get_image_features(...)`, their
`pooler_output` normalised), computed in the configured device and dtype, in batches. Each
family is fed as its own processor feeds it (`core.models.families`).

Ranking is by cosine for every family (normalised vectors in a cosine collection). SigLIP's
`logit_scale` and `logit_bias` (its sigmoid "is this pair a match" probability) are not
used: they are one monotonic map of the cosine, the same for every pair, so they would not
change any ranking, only the scale of the scores.

Loading (`load`, `loaded`, `close`: `core.models.lifecycle`) reads the checkpoint's config
and processor, tells its family, loads the weights in the dtype `core.models.tuning` chooses
(DTYPE=auto), and chooses the pixel paths once (`core.models.pixels.Preprocessing`).

Image preprocessing is separate from inference (`embed_pixels`): `embed_images` (queries)
preprocesses exactly as the processor does (`preprocess`); the index builder splits it into
`prepare` (worker threads) and `batch_pixels` (the model's thread: torch's resize on a CPU).

The queries (`embed_texts`, `embed_images`) run through what ENCODER_RUNTIME chose at load
(`core.models.onnx_runtime`: torch, or ONNX Runtime with float32 or int8 weights, per
tower); `embed_pixels`, the index builder's batches with their tuned and compiled path,
always runs on torch.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from core.config import Settings
from core.errors import ModelUnavailable
from core.models import families, tuning
from core.models.families import Family
from core.models.lifecycle import LazyModel
from core.models.onnx_runtime import RuntimeRequest, Weights, query_towers
from core.models.onnx_towers import IMAGE, TEXT, QueryTowers, torch_features
from core.models.pixels import Preprocessing
from core.models.runtime import load_pretrained, load_streamed, resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_TEXT_BATCH = 256
DEFAULT_IMAGE_BATCH = 32


@dataclass(frozen=True)
class _Loaded:
    """What loading gives: the model in its dtype, its processor and family, and the pixel
    paths chosen for it."""

    model: PreTrainedModel
    processor: ProcessorMixin
    family: Family
    dtype: torch.dtype
    pixels: Preprocessing
    queries: QueryTowers
    """What embeds the queries (ENCODER_RUNTIME)."""


class DualEncoder(LazyModel[_Loaded]):
    """A dual encoder (CLIP, SigLIP, SigLIP 2: see `core.models.families`) that loads lazily
    (thread-safe, `core.models.lifecycle`) and embeds texts and images.

    Inference is serialised by a lock: one forward pass at a time per encoder, which is
    what the CPU or GPU can do anyway; callers batch to go faster. Preprocessing is not
    under the lock and may run in parallel from other threads.
    """

    def __init__(
        self,
        model_name: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        tuning_cache: Path | None = None,
        tune_batch: bool = False,
        runtime: str = "torch",
    ) -> None:
        """`dtype="auto"`: measured on first load (`core.models.tuning`), cached in
        `tuning_cache` when given; `tune_batch`: also measure the best image batch size (for
        the index builder); `runtime`: ENCODER_RUNTIME (`core.models.onnx_runtime`)."""
        super().__init__(model_name, device)
        self._dtype = None if dtype == "auto" else resolve_dtype(dtype, self.device)
        self._tuning_cache = tuning.TuningCache(tuning_cache) if tuning_cache else None
        self._tune_batch = tune_batch
        self._runtime = runtime
        self.tuning: tuning.Tuning | None = None
        """How DTYPE, the batch size and ENCODER_RUNTIME were chosen (None when all were set)."""
        self._infer_lock = threading.Lock()
        self._compiled_image_features: Callable[..., BaseModelOutputWithPooling] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, tune_batch: bool = False) -> DualEncoder:
        """The encoder CLIP_MODEL, DEVICE, DTYPE and ENCODER_RUNTIME describe; what auto
        chose is cached in `<CHROMA_PATH>/hardware-tuning.json`."""
        return cls(
            settings.clip_model,
            device=settings.device,
            dtype=settings.dtype,
            tuning_cache=Path(settings.chroma_path) / tuning.CACHE_NAME,
            tune_batch=tune_batch,
            runtime=settings.encoder_runtime,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The inference dtype (with DTYPE=auto, known once loaded: this loads)."""
        return self._dtype if self._dtype is not None else self._model().dtype

    def _load(self) -> _Loaded:
        name = self.model_name
        config = load_pretrained("CLIP", name, lambda: AutoConfig.from_pretrained(name))
        families.check_model_type(name, config)
        processor = load_pretrained("CLIP", name, lambda: _processor(name))
        family = families.detect(name, config, processor)
        tuner = tuning.Tuner(
            key=tuning.key_for(name, self.device),
            device=self.device,
            input_size=family.input_size,
            tower=_image_tower,
            cache=self._tuning_cache,
            batch=self._tune_batch,
        )
        tuned = tuner.load(self._load_weights, self._dtype)
        queries = _query_towers(self, processor, family, tuned)
        self.tuning = tuning.with_runtime(tuned.tuning, tuned.dtype, queries.tuning)
        pixels = Preprocessing.choose(processor.image_processor, tuned.dtype, self.device)
        return _Loaded(tuned.model, processor, family, tuned.dtype, pixels, queries)

    def _load_weights(self, dtype: torch.dtype) -> PreTrainedModel:
        name = self.model_name
        log.info("loading %s on %s as %s", name, self.device, dtype)

        def normally() -> PreTrainedModel:
            return AutoModel.from_pretrained(name, dtype=dtype)

        model = load_pretrained(
            "CLIP", name, lambda: load_streamed(AutoModel, name, dtype, normally)
        )
        return model.to(self.device).eval()

    def close(self) -> None:
        """Free the weights and the compiled image tower (`compile` again after `load`)."""
        self._compiled_image_features = None
        super().close()

    def compile(self, batch_size: int = DEFAULT_IMAGE_BATCH) -> None:
        """Compile the image tower with torch.compile for batches of `batch_size` (the index
        builder: faster on a CPU once compiled, docs/benchmarks.md), compiling here rather
        than in the first batch. Smaller batches are padded to that shape so it compiles
        once; if compiling fails, it runs uncompiled."""
        loaded = self._model()
        self._compiled_image_features = torch.compile(loaded.model.get_image_features)
        size = loaded.family.input_size
        self.embed_pixels(np.zeros((1, 3, size, size), np.float32), batch_size)  # compiles now

    @property
    def dim(self) -> int:
        """The embedding dimension (512 for ViT-B/32, 768 for SigLIP base)."""
        return self._model().family.dim

    @property
    def input_size(self) -> int:
        """The side of the square image the model sees (224 for ViT-B/32, 256 for
        siglip-base-patch16-256): pass it to `decode_image(min_side=...)`."""
        return self._model().family.input_size

    @property
    def family(self) -> str:
        """ "clip", "siglip" or "siglip2" (loads the model)."""
        return self._model().family.name

    @property
    def multilingual(self) -> bool:
        """Whether queries in other languages than English are expected to work: true for
        SigLIP 2 (Gemma tokenizer), and for a model with "multilingual" in its name or a text
        vocabulary of 250,000 pieces or more (google/siglip-base-patch16-256-multilingual);
        false for CLIP and English SigLIP (loads the model)."""
        return self._model().family.multilingual

    def embed_texts(self, texts: Sequence[str], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """Embed texts; longer than the model's context (CLIP 77 tokens, SigLIP 64) is
        truncated. SigLIP texts are padded to the full context, as the model was trained."""
        loaded = self._model()
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = _tokens(loaded.processor, loaded.family, texts[start : start + batch_size])
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with self._infer_lock, torch.inference_mode():
                features = loaded.queries.features(TEXT, loaded.model, tokens)
            out.append(_normalised(features))
        return _stack(out, self)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resize, crop and normalise images as the model's own image processor does (CLIP:
        shortest side, centre crop; SigLIP: squashed to the square, no crop): float32 NCHW,
        bit for bit the processor's, except that a picture more elongated than 20:1 is
        first cut to its centre for a centre-cropping model (`core.models.pixels`).

        Thread-safe and lock-free, so it can run in workers beside `embed_pixels`.
        """
        return self._model().pixels.preprocess(images)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The part of one picture's preprocessing for worker threads (thread-safe): the
        uint8 RGB pixels on a CPU with the batched path (`BatchPixels`), otherwise
        `preprocess`'s float32 pixels. `batch_pixels` finishes a batch of them."""
        return self._model().pixels.prepare(image)

    def batch_pixels(self, prepared: Sequence[np.ndarray]) -> torch.Tensor:
        """`prepare`d pictures → the batch `embed_pixels` takes, on the model's thread: on a
        CPU resized with torch in the model's dtype (within a level or so of the processor's
        pixels), elsewhere stacked."""
        return self._model().pixels.batch_pixels(prepared)

    def embed_pixels(
        self, pixels: np.ndarray | torch.Tensor, batch_size: int = DEFAULT_IMAGE_BATCH
    ) -> np.ndarray:
        """Embed preprocessed pixels (from `preprocess` or `batch_pixels`), `batch_size` at
        a time."""
        loaded = self._model()
        tensor = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        out = []
        for start in range(0, len(tensor), batch_size):
            batch = tensor[start : start + batch_size]
            count = len(batch)
            if self._compiled_image_features is not None and count < batch_size:
                padding = batch.new_zeros((batch_size - count, *batch.shape[1:]))
                batch = torch.cat([batch, padding])  # one shape: no recompiling
            batch = batch.to(self.device, loaded.dtype)
            with self._infer_lock, torch.inference_mode():
                features = self._image_features(loaded.model, batch)
            out.append(_normalised(features)[:count])
        return _stack(out, self)

    def _image_features(self, model: PreTrainedModel, pixels: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled_image_features
        if compiled is not None:
            try:
                return compiled(pixel_values=pixels).pooler_output
            except Exception as err:  # a missing C++ compiler, an unsupported op, ...
                log.warning("torch.compile failed (%s): running uncompiled", err)
                self._compiled_image_features = None
        return _image_tower(model, pixels)

    def embed_images(
        self, images: Sequence[Image.Image], batch_size: int = DEFAULT_IMAGE_BATCH
    ) -> np.ndarray:
        """Embed RGB images, the queries' way: `preprocess`, then the image tower ENCODER_RUNTIME
        chose: `embed_pixels` where that is torch, else one ONNX call (a query's pictures)."""
        if not images:
            return _stack([], self)
        loaded, pixels = self._model(), torch.from_numpy(self.preprocess(images))
        if loaded.queries.image is None:
            return self.embed_pixels(pixels, batch_size)
        with self._infer_lock:
            features = loaded.queries.features(IMAGE, loaded.model, {"pixel_values": pixels})
        return _stack([_normalised(features)], self)


def _processor(name: str) -> ProcessorMixin:
    """The checkpoint's own processor; a tokenizer whose library is missing (SigLIP's
    SentencePiece) is one clear `ModelUnavailable`."""
    try:
        return AutoProcessor.from_pretrained(name)
    except ImportError as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailable(
            f"CLIP model unavailable: CLIP_MODEL {name} needs a library that is not installed "
            f"({why}): SigLIP's tokenizer needs `pip install sentencepiece` "
            "(or `pip install .[siglip]`)"
        ) from err


def _query_towers(
    encoder: DualEncoder, processor: ProcessorMixin, family: Family, tuned: tuning.Tuned
) -> QueryTowers:
    """What embeds `encoder`'s queries (its ENCODER_RUNTIME, `core.models.onnx_runtime`)."""
    request = RuntimeRequest(
        setting=encoder._runtime,
        model_name=encoder.model_name,
        device=encoder.device,
        tokenize=lambda texts: _tokens(processor, family, texts),
        input_size=family.input_size,
        cache=encoder._tuning_cache,
    )
    float32 = functools.partial(encoder._load_weights, torch.float32)
    return query_towers(request, Weights(tuned.model, tuned.dtype, float32))


def _tokens(
    processor: ProcessorMixin, family: Family, texts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The texts as the family's processor feeds them: SigLIP padded to the full context,
    CLIP to the longest; both truncated to the context."""
    return dict(
        processor.tokenizer(
            list(texts),
            padding=family.text_padding,
            truncation=True,
            max_length=family.max_text_tokens,
            return_tensors="pt",
        )
    )


def _image_tower(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The projected image embeddings (what DTYPE=auto times)."""
    return torch_features(model, IMAGE, {"pixel_values": pixels})


def _normalised(features: torch.Tensor) -> np.ndarray:
    tensor = features.float()
    tensor = tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return tensor.cpu().numpy()


def _stack(parts: list[np.ndarray], encoder: DualEncoder) -> np.ndarray:
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
