"""Image preprocessing for the dual encoder: decoded RGB pictures → the pixels the model
takes. `Preprocessing` is the path one model uses, chosen once when it loads, among three:

- `ExactPixels` (queries, `DualEncoder.preprocess`): the image processor's own pixels,
  bit for bit, in one Pillow pass per picture, on any thread.
- `BatchPixels` (the index builder on a CPU): the same geometry with torch's SIMD
  antialiased resize, a whole batch on the model's thread, much cheaper than Pillow's
  resize (docs/benchmarks.md); its pixels stay within `MAX_LEVEL_DIFFERENCE` of the
  processor's (checked when it is built), the normalisation is exactly the processor's.
- the processor itself, for any processor the two above do not repeat exactly.

Every path cuts a picture more elongated than `MAX_ASPECT` (20:1) to its centre before
resizing when the model centre-crops (CLIP): the processor would otherwise resize a
1×60,000 picture to 224×13,440,000 (9 GB) to keep its middle 224×224.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

_PIL_PROCESSORS = {"CLIPImageProcessorPil", "SiglipImageProcessorPil"}
"""The Pillow-backed processors whose work `ExactPixels` repeats."""
_HANDLED = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}
_PROBES = ((240, 320, 3), (333, 250, 3), (97, 103, 3))
MAX_ASPECT = 20
"""Long side / short side kept of a picture for a centre-cropping model (Telegram's own
limit for photos): its centre crop is square, so what is cut was never seen, and the
resized picture stays small (4,480×224 for CLIP)."""
MAX_LEVEL_DIFFERENCE = 3
"""How far (in uint8 levels) `BatchPixels`' resized pixels may be from Pillow's: 1 on
photo-sized pictures, with under 1% of the values differing, up to 3 on tiny ones (bounds
tests/test_pixels.py holds the resize to)."""
_TORCH_MODES = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}


def centre_box(width: int, height: int, crop: bool) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the centre `MAX_ASPECT`:1 part of a width × height
    picture, when the model centre-crops and the picture is more elongated than that;
    otherwise None (all of it is used)."""
    short, long = min(width, height), max(width, height)
    keep = max(1, short) * MAX_ASPECT
    if not crop or long <= keep:
        return None
    start = (long - keep) // 2
    return (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)


def bounded_aspect(image: Image.Image, crop: bool) -> Image.Image:
    """`image`, or its `centre_box` part."""
    box = centre_box(*image.size, crop)
    return image if box is None else image.crop(box)


class ExactPixels:
    """The image processor's work in one pass: resize the uint8 RGB picture once with
    Pillow (the same filter and sizes the processor uses), crop (CLIP) or not (SigLIP
    squashes), then rescale and normalise through a per-channel table of the 256 uint8
    values (made by the processor itself) straight into float32 CHW. It gives bit for bit
    the processor's pixels at a fraction of its cost: the processor converts to float
    arrays and back and copies several times per picture.

    Built only for the Pillow-backed CLIP/SigLIP processors and only after synthetic
    pictures gave exactly the processor's own pixels; anything else keeps the processor.
    """

    def __init__(self, processor: Any) -> None:
        self.resample = Image.Resampling(int(processor.resample))
        self.crop = bool(processor.do_center_crop)
        # `size` and `crop_size` are `SizeDict`s: an unset side is None (a TypeError here).
        if self.crop:
            self.edge = int(processor.size["shortest_edge"])
            self.out = (int(processor.crop_size["width"]), int(processor.crop_size["height"]))
        else:
            self.out = (int(processor.size["width"]), int(processor.size["height"]))
        # Rescaling and normalising map each uint8 value of each channel to one float: ask
        # the processor itself for that table (a 0..255 ramp, nothing resized), so the
        # arithmetic is exactly its own.
        ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, 2))
        table = processor(
            images=[ramp], do_resize=False, do_center_crop=False, return_tensors="np"
        )["pixel_values"][0]
        self.table = np.ascontiguousarray(table[:, 0, :], dtype=np.float32)  # (3, 256)

    @classmethod
    def for_processor(cls, processor: Any) -> ExactPixels | None:
        if type(processor).__name__ not in _PIL_PROCESSORS or not processor.do_resize:
            return None
        flags = {k for k, v in vars(processor).items() if k.startswith("do_") and v}
        if flags - _HANDLED:  # padding, reducing labels, ...: leave it to the processor
            return None
        try:
            exact = cls(processor)
            probes = _probes()
            expected = processor(images=probes, return_tensors="np")["pixel_values"]
            got = np.stack([exact(image) for image in probes])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        if got.shape != expected.shape or not np.array_equal(got, expected):
            return None
        return exact

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((width, height) to resize a width × height picture to, (left, top) of the crop
        in it), exactly as the processor computes them."""
        if not self.crop:
            return self.out, (0, 0)
        short, long = min(width, height), max(width, height)
        other = int(self.edge * long / short)
        size = (self.edge, other) if width <= height else (other, self.edge)
        return size, ((size[0] - self.out[0]) // 2, (size[1] - self.out[1]) // 2)

    def resized(self, image: Image.Image) -> np.ndarray:
        """`image` resized and cropped as the processor does: uint8 HWC."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = bounded_aspect(image, self.crop)
        size, (left, top) = self.geometry(*image.size)
        image = image.resize(size, self.resample)
        if self.crop:
            image = image.crop((left, top, left + self.out[0], top + self.out[1]))
        return np.asarray(image)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """float32 CHW pixels."""
        rgb = self.resized(image)
        out = np.empty((3, *rgb.shape[:2]), np.float32)
        for channel in range(3):
            np.take(self.table[channel], rgb[..., channel], out=out[channel])
        return out

    def empty(self) -> np.ndarray:
        return np.zeros((0, 3, self.out[1], self.out[0]), np.float32)


class BatchPixels:
    """`ExactPixels`' geometry with torch's resize, a batch at a time on the calling thread
    (which uses torch's intra-op threads): the pictures are handed over as uint8 HWC,
    resized into a uint8 batch (those of one size in one call), then rescaled and
    normalised in one pass straight into the model's dtype.

    Built only when the resized pixels stay within `MAX_LEVEL_DIFFERENCE` of Pillow's on
    synthetic pictures; the normalisation is an affine map whose result is compared with
    the processor's table for all 3 × 256 inputs, and the table itself (a gather) is used
    when they differ in the model's dtype (float32 does; bfloat16 does not).
    """

    def __init__(self, exact: ExactPixels, dtype: torch.dtype) -> None:
        self.exact, self.dtype = exact, dtype
        self.mode = _TORCH_MODES[exact.resample]
        table = torch.from_numpy(exact.table)
        self.scale = ((table[:, 255] - table[:, 0]) / 255).view(1, 3, 1, 1)
        self.shift = table[:, 0].view(1, 3, 1, 1).clone()
        self.table = table.to(dtype)
        ramp = torch.arange(256, dtype=torch.uint8).expand(1, 3, 1, 256)
        self.affine = torch.equal(self._affine(ramp)[0, :, 0], self.table)

    @classmethod
    def for_pixels(cls, exact: ExactPixels | None, dtype: torch.dtype) -> BatchPixels | None:
        if exact is None or exact.resample not in _TORCH_MODES:
            return None
        batch = cls(exact, dtype)
        for image in _probes():
            ours = batch.resize(cls.prepare(image)).numpy().transpose(1, 2, 0).astype(np.int16)
            pillow = exact.resized(image)
            if ours.shape != pillow.shape or np.abs(ours - pillow).max() > MAX_LEVEL_DIFFERENCE:
                return None
        return batch

    @staticmethod
    def prepare(image: Image.Image) -> np.ndarray:
        """What `__call__` takes for one picture: uint8 HWC RGB (any thread)."""
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))

    def resize(self, rgb: np.ndarray) -> torch.Tensor:
        """One picture (uint8 HWC) resized and cropped: uint8 CHW."""
        return self._resized(self._fitted(rgb)[None])[0]

    def __call__(self, pictures: Sequence[np.ndarray]) -> torch.Tensor:
        """A batch of `prepare`d pictures → NCHW in the model's dtype. Pictures of one size
        are resized together (one call of the resize kernel for all of them)."""
        width, height = self.exact.out
        batch = torch.empty((len(pictures), 3, height, width), dtype=torch.uint8)
        fitted = [self._fitted(rgb) for rgb in pictures]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for n, rgb in enumerate(fitted):
            by_shape.setdefault(rgb.shape, []).append(n)
        for members in by_shape.values():
            group = np.stack([fitted[n] for n in members])
            batch[members] = self._resized(group)
        if self.affine:
            return self._affine(batch)
        out = torch.empty(batch.shape, dtype=self.dtype)
        for channel in range(3):
            out[:, channel] = self.table[channel][batch[:, channel].long()]
        return out

    def _fitted(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb`, or a view of its `centre_box`."""
        box = centre_box(rgb.shape[1], rgb.shape[0], self.exact.crop)
        return rgb if box is None else rgb[box[1] : box[3], box[0] : box[2]]

    def _resized(self, pictures: np.ndarray) -> torch.Tensor:
        """Pictures of one size (uint8 NHWC) resized and cropped: uint8 NCHW (a view)."""
        height, width = pictures.shape[1:3]
        (new_width, new_height), (left, top) = self.exact.geometry(width, height)
        channels_first = torch.from_numpy(pictures).permute(0, 3, 1, 2)  # a view: no copy
        resized = torch.nn.functional.interpolate(
            channels_first, size=(new_height, new_width), mode=self.mode, antialias=True
        )
        out_width, out_height = self.exact.out
        return resized[:, :, top : top + out_height, left : left + out_width]

    def _affine(self, batch: torch.Tensor) -> torch.Tensor:
        floats = torch.empty(batch.shape, dtype=torch.float32)
        torch.mul(batch, self.scale, out=floats)
        return floats.add_(self.shift).to(self.dtype)


@dataclass(frozen=True)
class Preprocessing:
    """How one model's pictures become its pixels, chosen once when the model loads:
    `ExactPixels` when it repeats the processor exactly (else the processor itself) for
    `preprocess`; on a CPU, `BatchPixels` for `prepare` + `batch_pixels` (on a GPU the
    CPU's cores are free for worker threads, while the model's thread must keep the GPU
    fed). Thread-safe: `preprocess` and `prepare` run in worker threads."""

    processor: Any
    """The checkpoint's own image processor."""
    exact: ExactPixels | None
    batch: BatchPixels | None

    @classmethod
    def choose(cls, processor: Any, dtype: torch.dtype, device: torch.device) -> Preprocessing:
        """The fastest paths that keep `processor`'s pixels, for a model in `dtype` on
        `device`."""
        exact = ExactPixels.for_processor(processor)
        if exact is None:
            log.info("image preprocessing: the processor's own (no exact fast path)")
        batch = BatchPixels.for_pixels(exact, dtype) if device.type == "cpu" else None
        return cls(processor, exact, batch)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The processor's float32 NCHW pixels (bit for bit with `ExactPixels`), a picture
        more elongated than `MAX_ASPECT` cut to its centre first for a centre-cropping model."""
        if self.exact is not None:
            exact = self.exact
            return np.stack([exact(image) for image in images]) if images else exact.empty()
        crop = bool(getattr(self.processor, "do_center_crop", False))
        bounded = [bounded_aspect(image, crop) for image in images]
        return self.processor(images=bounded, return_tensors="np")["pixel_values"]

    def prepare(self, image: Image.Image) -> np.ndarray:
        """One picture's share for a worker thread: uint8 RGB for `BatchPixels`, otherwise
        `preprocess`'s float32 pixels."""
        if self.batch is not None:
            return BatchPixels.prepare(image)
        return self.preprocess([image])[0]

    def batch_pixels(self, prepared: Sequence[np.ndarray]) -> torch.Tensor:
        """`prepare`d pictures → one NCHW batch, on the model's thread: resized by
        `BatchPixels` in the model's dtype, or stacked."""
        if self.batch is not None:
            return self.batch(prepared)
        return torch.from_numpy(np.stack(prepared)) if prepared else torch.empty(0)


def _probes() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, shape, np.uint8)) for shape in _PROBES]
