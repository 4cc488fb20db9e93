"""Safe image decoding: whatever arrives (a photo from a chat, a file on disk) becomes an RGB
picture the encoder can take, or a `BadImage` error that says why not.

- a pixel-count limit is checked from the header, before any pixel is decoded, so
  decompression bombs are refused cheaply;
- only the formats a photo search needs are opened (JPEG, PNG, WebP, GIF, BMP, TIFF, and
  HEIC/AVIF when a Pillow plugin for them is installed): every other decoder is attack
  surface the bot does not need;
- JPEGs are decoded in draft mode (the DCT scaled by 1/2, 1/4 or 1/8) to the smallest size
  that still covers what the model needs, which is several times faster on big photos;
  other formats are reduced (box filter) to about that size right after decoding, before
  any mode conversion, so a huge PNG costs one full-size buffer, not four;
- EXIF orientation is applied; every mode (L, LA, P, RGBA, CMYK, I;16, ...) becomes RGB,
  transparency over white; animated images give their first frame;
- truncated, empty and non-image files raise `BadImage`.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import BadImage, ImageProblem

DEFAULT_MAX_PIXELS = 40_000_000
ImageSource = bytes | bytearray | str | os.PathLike | BinaryIO

_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_REDUCIBLE_MODES = {"RGB", "RGBA", "L", "LA", "I", "F", "CMYK"}
_STRIP_ROWS = 256
"""Input rows reduced at a time (at least one block): a strip of a 40-megapixel picture costs
a few MB."""
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF")
"""HEIF (HEIC photos from phones) only when the pillow-heif plugin registered it. The JPEG
opener also reads MPO, the JPEG variant many phones write."""


def allowed_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow can open (a plugin may register HEIF after import)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    """RGB pixels; smaller than the original when draft decoding applied."""
    width: int
    """Width of the original picture, after EXIF orientation."""
    height: int
    """Height of the original picture, after EXIF orientation."""


def decode_image(
    source: ImageSource, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode `source` (bytes, a path or a binary file) into RGB.

    `min_side`: the shortest side the caller needs (the model's input size); JPEGs are then
    draft-decoded to the smallest scale whose both sides are still at least that.
    Raises `BadImage` with a short reason for anything that is not a decodable image within
    the limits.
    """
    name = _describe(source)
    source = _checked_source(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=allowed_formats()) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImage(
                        f"{name} is too large: {width}×{height} pixels "
                        f"(the limit is {max_pixels:,} pixels)",
                        reason=ImageProblem.TOO_MANY_PIXELS,
                        size=(width, height),
                        limit=max_pixels,
                    )
                if min_side and im.format == "JPEG":
                    im.draft("RGB" if im.mode == "RGB" else None, (min_side, min_side))
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                small = _reduced(im, min_side) if min_side else im
                rgb = _to_rgb(ImageOps.exif_transpose(small))
    except BadImage:
        raise
    except _DECODE_ERRORS as err:
        raise _decode_error(err, name, max_pixels) from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(rgb, width, height)


_DECODE_ERRORS = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
)
"""What Pillow raises for a picture it cannot or must not decode."""


def _checked_source(source: ImageSource, name: str) -> BinaryIO | str | os.PathLike:
    """`source` ready for `Image.open` (bytes wrapped in a file); raises `BadImage` for empty
    bytes, and for a file on disk that is empty or cannot be read."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise BadImage(f"{name} is empty", reason=ImageProblem.DAMAGED)
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise BadImage(f"{name} is empty", reason=ImageProblem.DAMAGED)
        except OSError as err:
            raise BadImage(
                f"{name} cannot be read: {err.strerror or err}", reason=ImageProblem.GONE
            ) from None
    return source


def _decode_error(err: BaseException, name: str, max_pixels: int) -> BadImage:
    """Pillow's `err` as a `BadImage` that says which problem it is (see `ImageProblem`)."""
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return BadImage(
            f"{name} is too large to decode safely",
            reason=ImageProblem.TOO_MANY_PIXELS,
            limit=max_pixels,
        )
    if isinstance(err, UnidentifiedImageError):
        return BadImage(
            f"{name} is not an image (or not a format we can read)",
            reason=ImageProblem.NOT_A_PICTURE,
        )
    if isinstance(err, FileNotFoundError):
        return BadImage(f"{name} does not exist", reason=ImageProblem.GONE)
    return BadImage(f"{name} is corrupt or truncated ({err})", reason=ImageProblem.DAMAGED)


def load_image(
    source: ImageSource, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """`decode_image(...).image`: the RGB picture alone."""
    return decode_image(source, min_side=min_side, max_pixels=max_pixels).image


def _reduced(im: Image.Image, min_side: int) -> Image.Image:
    """`im` shrunk by a whole factor (box filter) that keeps both sides >= `min_side`; JPEGs
    were already draft-decoded, and palette or 1-bit pictures are left as they are.

    Reduced strip by strip: Pillow reduces RGBA through a premultiplied full-size copy, which
    would double the memory a huge picture costs."""
    factor = min(im.size) // min_side
    if factor < 2 or im.mode not in _REDUCIBLE_MODES:
        return im
    width, height = im.size
    reduced = Image.new(im.mode, (-(-width // factor), -(-height // factor)))
    step = factor * max(1, _STRIP_ROWS // factor)
    for top in range(0, height, step):
        strip = im.crop((0, top, width, min(top + step, height)))
        reduced.paste(strip.reduce(factor), (0, top // factor))
    reduced.info = im.info
    exif = im.getexif()
    if exif:
        reduced.getexif().update(exif)
    return reduced


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_BIT_MODES:
        pixels = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        grey = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"image {Path(source).name!r}"
    return "the image"


# Truncated files must fail loudly, never decode into half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# Telegram's limits for photos a bot uploads.
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
UPLOAD_MAX_SIDES_SUM = 10_000
UPLOAD_MAX_RATIO = 20
UPLOAD_SIDE = 2560
"""Longest side of a picture re-encoded for upload."""


def check_picture(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise `BadImage` unless `data` decodes, header and pixels, as a picture in an allowed
    format within `max_pixels`: a file sent as it is (an album's photo, a Full size
    document) must be one, not a valid header over anything else."""
    load_image(data, min_side=64, max_pixels=max_pixels)


def photo_for_upload(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes to upload as a Telegram photo for the picture file whose bytes are `data`.

    Most files go as they are. One over Telegram's photo limits (10 MB, width + height
    10,000) is sent as a smaller JPEG instead; a panorama beyond the 1:20 aspect ratio is
    padded. Raises `BadImage` when the bytes are not a picture in an allowed format.
    """
    try:
        with Image.open(io.BytesIO(data), formats=allowed_formats()) as probe:
            width, height = probe.size
            fits = probe.format in ("JPEG", "MPO", "PNG", "WEBP")
    except (UnidentifiedImageError, OSError) as err:
        raise BadImage(
            f"the file is not a picture in a format we send ({err})",
            reason=ImageProblem.NOT_A_PICTURE,
        ) from None
    ratio = max(width, height) / max(1, min(width, height))
    within_limits = (
        len(data) <= UPLOAD_MAX_BYTES
        and width + height <= UPLOAD_MAX_SIDES_SUM
        and ratio <= UPLOAD_MAX_RATIO
    )
    if fits and within_limits:
        check_picture(data, max_pixels=max_pixels)
        return data
    image = load_image(data, min_side=UPLOAD_SIDE, max_pixels=max_pixels)
    if ratio > UPLOAD_MAX_RATIO:
        side = max(image.size) // UPLOAD_MAX_RATIO + 1
        canvas = Image.new("RGB", (max(image.width, side), max(image.height, side)), "white")
        canvas.paste(
            image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2)
        )
        image = canvas
    image.thumbnail((UPLOAD_SIDE, UPLOAD_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
