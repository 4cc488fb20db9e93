from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DatasetError
from core.json_files import read_json


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
