"""core.sources.checksums: the pinned official digests and COCO_CHECKSUMS files as `md5sum` and
`sha256sum` print them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.sources.checksums import OFFICIAL, Digest, expected_digests, file_digest, read_checksums

MD5 = "0123456789abcdef0123456789abcdef"
SHA256 = "ab" * 32
PATHS = ["annotations/annotations_trainval2014.zip", "zips/val2014.zip"]


def test_the_official_zips_are_pinned_with_sizes_and_md5s() -> None:
    assert dict(OFFICIAL) == {
        "zips/train2014.zip": Digest("md5", "0da8c0bd3d6becc4dcb32757491aca88", 13_510_573_713),
        "zips/val2014.zip": Digest("md5", "a3d79f5ed8d289b7a7554ce06a5782b3", 6_645_013_297),
        "annotations/annotations_trainval2014.zip": Digest(
            "md5", "0a379cfc70b0e71301e0f377548639bd", 252_872_794
        ),
    }
    assert expected_digests(None, PATHS) == {path: OFFICIAL[path] for path in PATHS}


def test_md5sum_and_sha256sum_lines_are_read(tmp_path: Path) -> None:
    sums = tmp_path / "sums"
    sums.write_text(
        f"{MD5.upper()}  annotations/annotations_trainval2014.zip\n"
        "\n"
        f"{SHA256} *./zips/val2014.zip\n"
        f"{MD5}  zips/train2014.zip\n"
    )
    assert expected_digests(sums, PATHS) == {
        PATHS[0]: Digest("md5", MD5),  # no size: the server's announced size is used
        PATHS[1]: Digest("sha256", SHA256),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{MD5} zips/val2014.zip\n", r"line 1 is not '<md5 or sha256 hex>  <path>'"),
        (f"{MD5}\n", r"line 1 is not"),
        (f"{MD5}  ok.zip\n{'ab' * 20}  zips/val2014.zip\n", r"line 2 is not"),  # a SHA-1
        (
            f"{MD5}  zips/val2014.zip\n{SHA256}  zips/val2014.zip\n",
            r"line 2: zips/val2014\.zip is listed twice",
        ),
        (
            f"{MD5}  zips/val2014.zip\n",
            r"has no line for annotations/annotations_trainval2014\.zip$",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    sums = tmp_path / "sums"
    sums.write_text(text)
    with pytest.raises(ConfigError, match=rf"^COCO_CHECKSUMS {sums}:? {expected}") as caught:
        expected_digests(sums, PATHS)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00"])
def test_an_unreadable_file_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    sums = tmp_path / "sums"
    if content is not None:
        sums.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^COCO_CHECKSUMS {sums} cannot be read: "):
        read_checksums(sums)


def test_file_digest_hashes_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 10_000  # several read chunks
    path.write_bytes(data)
    assert file_digest(path, "md5") == hashlib.md5(data).hexdigest()
    assert file_digest(path, "sha256") == hashlib.sha256(data).hexdigest()
