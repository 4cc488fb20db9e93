"""The dual encoder (CLIP, SigLIP or SigLIP 2): texts and images → L2-normalised float32
vectors in one shared space.

The vectors are exactly what the reference Hugging Face call gives
(`model.get_text_features(**processor(text=...))`, `get_image_features(...)`, their
`pooler_output` normalised), computed in the configured device and dtype, in batches. Each
family is fed as its own processor feeds it (`core.models.families`).

Ranking is by cosine for every family (normalised vectors in a cosine collection). SigLIP's
`logit_scale` and `logit_bias` (its sigmoid "is this pair a match" probability) are not
used: they are one monotonic map of the cosine, the same for every pair, so they would not
change any ranking, only the scale of the scores. Image preprocessing
(`preprocess`) is separate from inference (`embed_pixels`) so the index builder can run it
in worker threads while the model works; `embed_images` does both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin

from core.config import Settings
from core.errors import ModelUnavailable
from core.models import families, tuning
from core.models.families import Family
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


class ClipEncoder:
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
        self._fast: object = _UNSET

    @classmethod
    def from_settings(cls, settings: Settings, *, tune_batch: bool = False) -> ClipEncoder:
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
        shortest side, centre crop; SigLIP: squashed to the square, no crop): float32 NCHW.

        Thread-safe and lock-free, so it can run in workers beside `embed_pixels`.
        """
        loaded = self._model.get()
        fast = self._fast_pixels(loaded)
        if fast is not None:
            return np.stack([fast(image) for image in images]) if images else fast.empty()
        return loaded.processor.image_processor(images=list(images), return_tensors="np")[
            "pixel_values"
        ]

    def model_pixels(self, image: Image.Image) -> np.ndarray:
        """One picture's pixels as `embed_pixels` takes them with the least work on the
        model's thread: for a bfloat16 model with the exact fast path, bfloat16 bit patterns
        (uint16 CHW: half the bytes to stack, no conversion at inference, the same values);
        otherwise float32 CHW as from `preprocess`. Thread-safe, like `preprocess`."""
        fast = self._fast_pixels(self._model.get())
        if fast is not None and self.dtype == torch.bfloat16:
            return fast(image, bf16=True)
        return self.preprocess([image])[0]

    def _fast_pixels(self, loaded: _Loaded) -> FastPixels | None:
        """The one-pass preprocessor for this model's processor, or None (checked once
        against the processor itself; a mismatch keeps the processor's own path)."""
        if self._fast is _UNSET:
            self._fast = FastPixels.for_processor(loaded.processor.image_processor)
            if self._fast is None:
                log.info("image preprocessing: the processor's own (no exact fast path)")
        return self._fast  # type: ignore[return-value]

    def embed_pixels(self, pixels: np.ndarray, batch_size: int = DEFAULT_IMAGE_BATCH) -> np.ndarray:
        """Embed preprocessed pixels: float32 from `preprocess`, or bfloat16 bit patterns
        (uint16, from `model_pixels` or `bf16_bits`)."""
        loaded = self._model.get()
        out = []
        for start in range(0, len(pixels), batch_size):
            batch = np.ascontiguousarray(pixels[start : start + batch_size])
            count = len(batch)
            if self._compiled_image_features is not None and count < batch_size:
                padding = np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, padding])  # one shape: no recompiling
            tensor = torch.from_numpy(batch)
            if batch.dtype == np.uint16:
                tensor = tensor.view(torch.bfloat16)
            tensor = tensor.to(self.device, self.dtype)
            with self._infer_lock, torch.inference_mode():
                features = self._image_features(loaded.model, tensor)
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
_PIL_PROCESSORS = {"CLIPImageProcessorPil", "SiglipImageProcessorPil", "CLIPImageProcessor"}
_HANDLED = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}


class FastPixels:
    """The image processor's work in one pass: resize the uint8 RGB picture once with
    Pillow (the same filter and sizes the processor uses), crop (CLIP) or not (SigLIP
    squashes), then rescale and normalise through a per-channel table of the 256 uint8 values (made
    by the processor itself) straight into float32 CHW. It gives bit for bit the
    processor's pixels at a fraction of its cost:
    the processor converts to float arrays and back and copies several times per picture.

    Built only for the Pillow-backed CLIP/SigLIP processors and only after one synthetic
    picture gave exactly the processor's own pixels; anything else keeps the processor.
    """

    def __init__(self, processor: Any) -> None:
        self.resample = Image.Resampling(int(processor.resample))
        self.crop = bool(processor.do_center_crop)
        if self.crop:
            self.edge = int(_get(processor.size, "shortest_edge"))
            self.out = (
                int(_get(processor.crop_size, "width")),
                int(_get(processor.crop_size, "height")),
            )
        else:
            self.out = (int(_get(processor.size, "width")), int(_get(processor.size, "height")))
        # Rescaling and normalising map each uint8 value of each channel to one float: ask
        # the processor itself for that table (a 0..255 ramp, nothing resized), so the
        # arithmetic is exactly its own.
        ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, 2))
        table = processor(
            images=[ramp], do_resize=False, do_center_crop=False, return_tensors="np"
        )["pixel_values"][0]
        self.table = np.ascontiguousarray(table[:, 0, :], dtype=np.float32)  # (3, 256)
        self.table_bf16 = bf16_bits(self.table)

    @classmethod
    def for_processor(cls, processor: Any) -> FastPixels | None:
        if type(processor).__name__ not in _PIL_PROCESSORS or not processor.do_resize:
            return None
        flags = {k for k, v in vars(processor).items() if k.startswith("do_") and v}
        if flags - _HANDLED:  # padding, reducing labels, ...: leave it to the processor
            return None
        try:
            fast = cls(processor)
            rng = np.random.default_rng(0)
            probe = [Image.fromarray(rng.integers(0, 256, s, np.uint8)) for s in _PROBES]
            expected = processor(images=probe, return_tensors="np")["pixel_values"]
            got = np.stack([fast(image) for image in probe])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        if got.shape != expected.shape or not np.array_equal(got, expected):
            return None
        return fast

    def __call__(self, image: Image.Image, *, bf16: bool = False) -> np.ndarray:
        """float32 CHW pixels; with `bf16`, the same values rounded to bfloat16, as bit
        patterns (uint16)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.crop:
            width, height = image.size
            short, long = min(width, height), max(width, height)
            other = int(self.edge * long / short)
            size = (self.edge, other) if width <= height else (other, self.edge)
            image = image.resize(size, self.resample)
            left, top = (size[0] - self.out[0]) // 2, (size[1] - self.out[1]) // 2
            image = image.crop((left, top, left + self.out[0], top + self.out[1]))
        else:
            image = image.resize(self.out, self.resample)
        rgb = np.asarray(image)
        table = self.table_bf16 if bf16 else self.table
        out = np.empty((3, *rgb.shape[:2]), table.dtype)
        for channel in range(3):
            np.take(table[channel], rgb[..., channel], out=out[channel])
        return out

    def empty(self) -> np.ndarray:
        return np.zeros((0, 3, self.out[1], self.out[0]), np.float32)


_PROBES = ((240, 320, 3), (333, 250, 3), (97, 103, 3))


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 `values` rounded to bfloat16 (as torch rounds), as their bit patterns in a
    uint16 array of the same shape: numpy has no bfloat16, `embed_pixels` reads them back."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(torch.bfloat16)
    return tensor.view(torch.int16).numpy().view(np.uint16)


def _get(size: Any, key: str) -> Any:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    if value is None:
        raise KeyError(key)
    return value


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


def _stack(parts: list[np.ndarray], encoder: ClipEncoder) -> np.ndarray:
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
