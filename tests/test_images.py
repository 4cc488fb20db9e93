from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import BadImage, ImageProblem
from core.images import decode_image, load_image, photo_for_upload


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def half_red_half_blue(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: orientation changes are visible."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(half_red_half_blue(), "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data)
    assert decoded.image.size == (20, 40)
    assert (decoded.width, decoded.height) == (20, 40)
    top, bottom = np.asarray(decoded.image)[2, 10], np.asarray(decoded.image)[37, 10]
    assert top[0] > 200 and top[2] < 60  # the red half ends up on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("mode", "fmt", "expected"),
    [
        ("L", "PNG", (128, 128, 128)),
        ("LA", "PNG", (128, 128, 128)),
        ("P", "PNG", (255, 0, 0)),
        ("RGBA", "PNG", (255, 0, 0)),
        ("CMYK", "JPEG", (255, 0, 0)),
        ("1", "PNG", (255, 255, 255)),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str, expected: tuple[int, int, int]) -> None:
    colour = (128, 128, 128) if mode in ("L", "LA") else (255, 0, 0)
    source = Image.new("RGB", (16, 16), colour)
    converted = source.convert("L").convert("LA") if mode == "LA" else source.convert(mode)
    if mode == "1":
        converted = Image.new("1", (16, 16), 1)
    image = load_image(encode(converted, fmt))
    assert image.mode == "RGB"
    assert np.allclose(mean_rgb(image), expected, atol=12)


def test_transparency_goes_over_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert np.allclose(mean_rgb(load_image(encode(image, "PNG"))), (255, 255, 255), atol=1)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.allclose(mean_rgb(load_image(encode(palette, "PNG", transparency=0))), 255, atol=1)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    pixels = np.full((8, 8), 32768, dtype=np.uint16)  # half of the 16-bit range
    image = Image.fromarray(pixels)  # mode I;16
    assert image.mode == "I;16"
    decoded = load_image(encode(image, "PNG"))
    assert np.allclose(mean_rgb(decoded), 127.5, atol=2)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = load_image(buffer.getvalue())
    assert image.mode == "RGB"
    red = mean_rgb(image)
    assert red[0] > 200 and red[2] < 60


def test_jpeg_draft_decodes_just_big_enough() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    decoded = decode_image(encode(photo, quality=90), min_side=224)
    assert (decoded.width, decoded.height) == (2000, 1500)  # the original size is reported
    assert min(decoded.image.size) >= 224  # still enough for the model
    assert decoded.image.size[0] <= 500  # but decoded at 1/4 scale or smaller
    assert load_image(encode(photo, quality=90)).size == (2000, 1500)  # no min_side: full size


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(BadImage, match="too large"):
        load_image(_png_header_only(100_000, 100_000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(BadImage, match="100×100"):
        load_image(data, max_pixels=9_999)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is not a picture at all", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 64, "corrupt|not an image"),
    ],
)
def test_bad_bytes_raise_bad_image(content: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        load_image(content)


def test_truncated_jpeg_raises_bad_image() -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    with pytest.raises(BadImage, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def reason_of(source: bytes | Path, **limits: int) -> BadImage:
    with pytest.raises(BadImage) as caught:
        load_image(source, **limits)
    return caught.value


def test_each_refusal_says_which_problem_it_is(tmp_path: Path) -> None:
    """The bot tells a user each problem in their own terms: the reason, and for too many
    pixels the size and the limit, travel with the error."""
    big = reason_of(encode(Image.new("RGB", (100, 80)), "PNG"), max_pixels=7_999)
    assert big.reason is ImageProblem.TOO_MANY_PIXELS
    assert big.size == (100, 80) and big.limit == 7_999
    bomb = reason_of(_png_header_only(100_000, 100_000))
    assert bomb.reason is ImageProblem.TOO_MANY_PIXELS and bomb.limit == 40_000_000
    assert reason_of(b"words, not pixels").reason is ImageProblem.NOT_A_PICTURE
    assert reason_of(encode(Image.new("RGB", (10, 10)), "ICO")).reason is ImageProblem.NOT_A_PICTURE
    data = encode(Image.new("RGB", (300, 200), (200, 30, 30)))
    assert reason_of(data[: len(data) // 2]).reason is ImageProblem.DAMAGED
    assert reason_of(b"").reason is ImageProblem.DAMAGED
    assert reason_of(tmp_path / "missing.jpg").reason is ImageProblem.GONE


def test_files_on_disk(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (10, 10), (0, 255, 0)), "PNG"))
    assert load_image(good).size == (10, 10)
    assert load_image(str(good)).size == (10, 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadImage, match=r"'empty\.jpg' is empty"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(BadImage, match=r"'notes\.jpg' is not an image"):
        load_image(text)
    with pytest.raises(BadImage, match=r"'missing\.jpg' cannot be read"):
        load_image(tmp_path / "missing.jpg")


def test_photo_for_upload_keeps_ordinary_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    data = encode(half_red_half_blue(640, 480))
    path.write_bytes(data)
    assert photo_for_upload(data) == data


def test_photo_for_upload_shrinks_what_telegram_would_refuse(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    half_red_half_blue(9000, 2000).save(big)  # width + height over 10,000
    shrunk = Image.open(io.BytesIO(photo_for_upload(big.read_bytes())))
    assert shrunk.format == "JPEG" and shrunk.width + shrunk.height <= 10_000
    panorama = tmp_path / "pano.jpg"
    half_red_half_blue(4200, 100).save(panorama)  # 42:1
    padded = Image.open(io.BytesIO(photo_for_upload(panorama.read_bytes())))
    assert max(padded.size) / min(padded.size) <= 20
    with pytest.raises(BadImage):
        photo_for_upload(b"")


def test_photo_for_upload_refuses_a_valid_header_over_garbage() -> None:
    data = encode(half_red_half_blue(640, 480))
    with pytest.raises(BadImage):
        photo_for_upload(data[:200] + b"\0" * 5000)


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PPM", "PCX", "SGI"])
def test_formats_the_bot_does_not_need_are_refused(fmt: str) -> None:
    buffer = io.BytesIO()
    half_red_half_blue(64, 64).save(buffer, fmt)
    with pytest.raises(BadImage, match="not an image"):
        load_image(buffer.getvalue())
    with pytest.raises(BadImage):
        photo_for_upload(buffer.getvalue())


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_big_pngs_are_reduced_before_conversion_and_keep_their_look(mode: str) -> None:
    picture = half_red_half_blue(2000, 1200).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), min_side=224)
    assert (decoded.width, decoded.height) == (2000, 1200)
    assert min(decoded.image.size) >= 224 and min(decoded.image.size) < 2 * 224
    full = load_image(buffer.getvalue()).resize(decoded.image.size, Image.Resampling.BOX)
    difference = np.abs(np.asarray(full, np.int16) - np.asarray(decoded.image, np.int16))
    assert difference.mean() < 2.0
