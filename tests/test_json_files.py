from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DatasetError
from core.json_files import MAX_JSON_BYTES, read_json


def test_a_good_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"images": [1, 2]}', encoding="utf-8")
    assert read_json(path, "annotation file", DatasetError) == {"images": [1, 2]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"annotation file .*a\.json not found$"),
        (b'{"images": [', r"is not valid JSON \(line 1, column 13: .*\); download it again$"),
        (b"\xff\xfe{}", r"cannot be read: .*codec"),
    ],
)
def test_a_bad_file_is_one_line_of_the_callers_error(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "a.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=expected) as caught:
        read_json(path, "annotation file", DatasetError, hint="; download it again")
    assert "\n" not in str(caught.value)


def test_a_folder_in_its_place_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot be read"):
        read_json(tmp_path, "annotation file", DatasetError)


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path, opening: str) -> None:
    path = tmp_path / "a.json"
    closing = "]" if opening == "[" else "}"
    path.write_text(opening * 100_000 + "1" + closing * 100_000, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        read_json(path, "annotation file", DatasetError, hint="; download it again")
    assert str(caught.value) == (
        f"annotation file {path} is nested too deeply to be read; download it again"
    )


def test_a_file_over_the_size_cap_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"images": [1, 2]}', encoding="utf-8")
    assert read_json(path, "annotation file", DatasetError, max_bytes=18) == {"images": [1, 2]}
    with pytest.raises(DatasetError) as caught:
        read_json(path, "annotation file", DatasetError, max_bytes=17)
    assert str(caught.value) == f"annotation file {path} is larger than 17 bytes: refused"
    assert MAX_JSON_BYTES == 1_000_000_000  # COCO's largest JSON is about 330 MB
