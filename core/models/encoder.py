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

Image preprocessing is separate from inference (`embed_pixels`): `embed_images` (queries)
preprocesses exactly as the processor does (`preprocess`); the index builder splits it into
`prepare` (worker threads) and `batch_pixels` (the model's thread: torch's resize on a CPU,
see `core.models.pixels`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin

from core.config import Settings
from core.errors import ModelUnavailable
from core.models import families, tuning
from core.models.families import Family
from core.models.pixels import BatchPixels, ExactPixels, bounded_aspect
from core.models.runtime import (
    DTYPES,
    LazyModel,
    load_pretrained,
    load_streamed,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

DEFAULT_TEXT_BATCH = 256
DEFAULT_IMAGE_BATCH = 32


@dataclass(frozen=True)
class _Loaded:
    model: PreTrainedModel
    processor: ProcessorMixin
    family: Family


class DualEncoder:
    """A dual encoder (CLIP, SigLIP, SigLIP 2: see `core.models.families`) that loads lazily
    (thread-safe) and embeds texts and images.

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
    ) -> None:
        """`dtype="auto"`: measured on first load (`core.models.tuning`), cached in
        `tuning_cache` when given; `tune_batch`: also measure the best image batch size
        (`tuning.batch_size`, for the index builder)."""
        self.model_name = model_name
        self.device = resolve_device(device)
        self._dtype = None if dtype == "auto" else resolve_dtype(dtype, self.device)
        self._tuning_cache = tuning.TuningCache(tuning_cache) if tuning_cache else None
        self._tune_batch = tune_batch
        self.tuning: tuning.Tuning | None = None
        """How `dtype="auto"` and the batch size were chosen (None when set explicitly)."""
        self._model = LazyModel(self._load)
        self._infer_lock = threading.Lock()
        self._compiled_image_features: Callable[..., object] | None = None
        self._exact: object = _UNSET
        self._batch_pixels: object = _UNSET

    @classmethod
    def from_settings(cls, settings: Settings, *, tune_batch: bool = False) -> DualEncoder:
        """The encoder CLIP_MODEL, DEVICE and DTYPE describe; DTYPE=auto is cached in
        `<CHROMA_PATH>/hardware-tuning.json`."""
        return cls(
            settings.clip_model,
            device=settings.device,
            dtype=settings.dtype,
            tuning_cache=Path(settings.chroma_path) / tuning.CACHE_NAME,
            tune_batch=tune_batch,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The inference dtype (with DTYPE=auto, known once loaded: this loads)."""
        if self._dtype is None:
            self._model.get()
        assert self._dtype is not None
        return self._dtype

    def _load(self) -> _Loaded:
        name = self.model_name
        config = load_pretrained("CLIP", name, lambda: AutoConfig.from_pretrained(name))
        families.check_model_type(name, config)
        processor = load_pretrained("CLIP", name, lambda: _processor(name))
        key = tuning.key_for(name, self.device)
        cached = self._tuning_cache.get(key) if self._tuning_cache else None
        if self._dtype is None and cached is not None:
            self.tuning, self._dtype = cached, DTYPES[cached.dtype]
            log.info("DTYPE auto → %s", cached.dtype_line(tuning.cpu_name()))
            if self._tune_batch and cached.batch_size is not None:
                log.info("--batch-size auto → %s", cached.batch_line())
        model = None
        if self._dtype is None:
            model, family = self._load_model(name, torch.float32, processor)
            self.tuning = self._measure_dtype(model, family)
            self._dtype = DTYPES[self.tuning.dtype]
            if model.dtype != self._dtype:  # it ended in the last candidate
                model = None
        if model is None:
            model, family = self._load_model(name, self._dtype, processor)
        if self._tune_batch and (self.tuning is None or self.tuning.batch_size is None):
            self._measure_batches(model, family)
        if self._tuning_cache is not None and self.tuning and self.tuning.dtype_rates:
            self._tuning_cache.put(key, self.tuning)  # only what DTYPE=auto chose
        return _Loaded(model, processor, family)

    def _load_model(
        self, name: str, dtype: torch.dtype, processor: ProcessorMixin
    ) -> tuple[PreTrainedModel, Family]:
        log.info("loading %s on %s as %s", name, self.device, dtype)

        def normally() -> PreTrainedModel:
            return AutoModel.from_pretrained(name, dtype=dtype)

        model = load_pretrained(
            "CLIP", name, lambda: load_streamed(AutoModel, name, dtype, normally)
        )
        family = families.detect(name, model.config, processor)
        model.to(self.device).eval()
        return model, family

    def _measure_dtype(self, model: PreTrainedModel, family: Family) -> tuning.Tuning:
        """Time the image tower per candidate dtype (`model` is converted in place)."""
        pixels = tuning.probe_pixels(tuning.PROBE_BATCH, family.input_size).to(self.device)
        rates, cosines = tuning.measure_dtypes(
            model, _image_tower, pixels, tuning.dtype_candidates(self.device)
        )
        chosen, rejected = tuning.choose_dtype(rates, cosines)
        for dtype, cosine in rejected.items():
            log.warning("DTYPE auto: %s rejected, cosine with float32 %.4f", dtype, cosine)
        found = tuning.Tuning(chosen, {d: round(r, 1) for d, r in rates.items()}, rejected)
        log.info("DTYPE auto → %s", found.dtype_line(tuning.cpu_name()))
        return found

    def _measure_batches(self, model: PreTrainedModel, family: Family) -> None:
        dtype = self._dtype
        size = family.input_size
        rates = tuning.measure_batches(
            lambda pixels: _image_tower(model, pixels),
            lambda n: tuning.probe_pixels(n, size).to(self.device, dtype),
        )
        if self.tuning is None:  # DTYPE set explicitly: only the batch is tuned
            name = str(dtype).removeprefix("torch.")
            self.tuning = tuning.Tuning(name, {}, batch_size=None)
        self.tuning.batch_size = tuning.choose_batch(rates)
        self.tuning.batch_rates = {str(b): round(r, 1) for b, r in rates.items()}
        self.tuning.cached = False
        log.info("--batch-size auto → %s", self.tuning.batch_line())

    def load(self) -> None:
        """Load the weights now instead of on first use (raises `ModelUnavailable`)."""
        self._model.get()

    def compile(self, batch_size: int = DEFAULT_IMAGE_BATCH) -> None:
        """Compile the image tower with torch.compile for batches of `batch_size` (the index
        builder): about +20% images/s on a bf16 CPU, after about 30 s of compiling, spent
        here. Smaller batches are padded to that shape so it compiles once; if compiling
        fails, it runs uncompiled."""
        loaded = self._model.get()
        self._compiled_image_features = torch.compile(loaded.model.get_image_features)
        size = loaded.family.input_size
        self.embed_pixels(np.zeros((1, 3, size, size), np.float32), batch_size)  # compiles now

    @property
    def loaded(self) -> bool:
        return self._model.loaded

    @property
    def dim(self) -> int:
        """The embedding dimension (512 for ViT-B/32, 768 for SigLIP base)."""
        return self._model.get().family.dim

    @property
    def input_size(self) -> int:
        """The side of the square image the model sees (224 for ViT-B/32, 256 for
        siglip-base-patch16-256): pass it to `decode_image(min_side=...)`."""
        return self._model.get().family.input_size

    @property
    def family(self) -> str:
        """ "clip", "siglip" or "siglip2" (loads the model)."""
        return self._model.get().family.name

    @property
    def multilingual(self) -> bool:
        """Whether queries in other languages than English are expected to work: true for
        SigLIP 2 (Gemma tokenizer), and for a model with "multilingual" in its name or a text
        vocabulary of 250,000 pieces or more (google/siglip-base-patch16-256-multilingual);
        false for CLIP and English SigLIP (loads the model)."""
        return self._model.get().family.multilingual

    def embed_texts(self, texts: Sequence[str], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """Embed texts; longer than the model's context (CLIP 77 tokens, SigLIP 64) is
        truncated. SigLIP texts are padded to the full context, as the model was trained."""
        loaded = self._model.get()
        family = loaded.family
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = loaded.processor.tokenizer(
                list(texts[start : start + batch_size]),
                padding=family.text_padding,
                truncation=True,
                max_length=family.max_text_tokens,
                return_tensors="pt",
            )
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with self._infer_lock, torch.inference_mode():
                features = loaded.model.get_text_features(**tokens)
            out.append(_normalised(features))
        return _stack(out, self)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resize, crop and normalise images as the model's own image processor does (CLIP:
        shortest side, centre crop; SigLIP: squashed to the square, no crop): float32 NCHW,
        bit for bit the processor's (`ExactPixels`), except that a picture more
        elongated than 20:1 is first cut to its centre for a centre-cropping model.

        Thread-safe and lock-free, so it can run in workers beside `embed_pixels`.
        """
        loaded = self._model.get()
        exact = self._exact_pixels(loaded)
        if exact is not None:
            return np.stack([exact(image) for image in images]) if images else exact.empty()
        processor = loaded.processor.image_processor
        crop = bool(getattr(processor, "do_center_crop", False))
        bounded = [bounded_aspect(image, crop) for image in images]
        return processor(images=bounded, return_tensors="np")["pixel_values"]

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The part of one picture's preprocessing for worker threads (thread-safe): the
        uint8 RGB pixels on a CPU with the batched path (`BatchPixels`), otherwise
        `preprocess`'s float32 pixels. `batch_pixels` finishes a batch of them."""
        if self._batch(self._model.get()) is not None:
            return BatchPixels.prepare(image)
        return self.preprocess([image])[0]

    def batch_pixels(self, prepared: Sequence[np.ndarray]) -> torch.Tensor:
        """`prepare`d pictures → the batch `embed_pixels` takes, on the model's thread: on a
        CPU resized with torch in the model's dtype (pixels within 1/255 of the processor's
        on photos, about a quarter of Pillow's cost), elsewhere stacked."""
        batch = self._batch(self._model.get())
        if batch is not None:
            return batch(prepared)
        return torch.from_numpy(np.stack(prepared)) if prepared else torch.empty(0)

    def _exact_pixels(self, loaded: _Loaded) -> ExactPixels | None:
        """The one-pass preprocessor for this model's processor, or None (checked once
        against the processor itself; a mismatch keeps the processor's own path)."""
        if self._exact is _UNSET:
            self._exact = ExactPixels.for_processor(loaded.processor.image_processor)
            if self._exact is None:
                log.info("image preprocessing: the processor's own (no exact fast path)")
        return self._exact  # type: ignore[return-value]

    def _batch(self, loaded: _Loaded) -> BatchPixels | None:
        """The batched torch path, on a CPU only: on a GPU the CPU's cores are free for
        worker threads while the model's thread must keep the GPU fed."""
        if self._batch_pixels is _UNSET:
            exact = self._exact_pixels(loaded) if self.device.type == "cpu" else None
            self._batch_pixels = BatchPixels.for_pixels(exact, self.dtype)
        return self._batch_pixels  # type: ignore[return-value]

    def embed_pixels(
        self, pixels: np.ndarray | torch.Tensor, batch_size: int = DEFAULT_IMAGE_BATCH
    ) -> np.ndarray:
        """Embed preprocessed pixels (from `preprocess` or `batch_pixels`), `batch_size` at
        a time."""
        loaded = self._model.get()
        tensor = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
        out = []
        for start in range(0, len(tensor), batch_size):
            batch = tensor[start : start + batch_size]
            count = len(batch)
            if self._compiled_image_features is not None and count < batch_size:
                padding = batch.new_zeros((batch_size - count, *batch.shape[1:]))
                batch = torch.cat([batch, padding])  # one shape: no recompiling
            batch = batch.to(self.device, self.dtype)
            with self._infer_lock, torch.inference_mode():
                features = self._image_features(loaded.model, batch)
            out.append(_normalised(features)[:count])
        return _stack(out, self)

    def _image_features(self, model: PreTrainedModel, pixels: torch.Tensor) -> object:
        compiled = self._compiled_image_features
        if compiled is not None:
            try:
                return compiled(pixel_values=pixels)
            except Exception as err:  # a missing C++ compiler, an unsupported op, ...
                log.warning("torch.compile failed (%s): running uncompiled", err)
                self._compiled_image_features = None
        return model.get_image_features(pixel_values=pixels)

    def embed_images(
        self, images: Sequence[Image.Image], batch_size: int = DEFAULT_IMAGE_BATCH
    ) -> np.ndarray:
        """Embed RGB images (preprocess + embed_pixels)."""
        return (
            self.embed_pixels(self.preprocess(images), batch_size) if images else _stack([], self)
        )


_UNSET = object()


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


def _image_tower(model: PreTrainedModel, pixels: torch.Tensor) -> torch.Tensor:
    features = model.get_image_features(pixel_values=pixels)
    return getattr(features, "pooler_output", features)


def _normalised(features: object) -> np.ndarray:
    # transformers 5 returns an output object whose pooler_output is the projected
    # embedding; 4.x returned the tensor itself.
    tensor = getattr(features, "pooler_output", features)
    tensor = tensor.float()
    tensor = tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return tensor.cpu().numpy()


def _stack(parts: list[np.ndarray], encoder: DualEncoder) -> np.ndarray:
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
