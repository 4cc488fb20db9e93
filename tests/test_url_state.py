"""The per-URL state of a list's downloads: on disk, one row per URL, across runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DownloadError
from core.sources.url_state import UrlRow, UrlState


def test_what_each_url_came_to_outlives_the_run(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = UrlState(path)
    assert first.meet("a", "http://a.test/a.jpg", 1) is None
    assert first.meet("a", "http://a.test/a.jpg", 2) == UrlRow(None, None, False, first.run)
    for key, line in (("b", 3), ("c", 4), ("d", 5)):
        first.meet(key, f"http://{key}.test/", line)
    first.done("a", "a.jpg")
    first.failed("b", "HTTP 404", permanent=True)
    first.failed("c", "HTTP 503", permanent=False)
    first.failed("d", "timeout", permanent=False)
    assert list(first.failures()) == [
        ("http://b.test/", "HTTP 404"),
        ("http://c.test/", "HTTP 503"),
        ("http://d.test/", "timeout"),
    ]
    first.close()

    second = UrlState(path)
    assert second.run == first.run + 1
    assert second.meet("a", "http://a.test/a.jpg", 1) == UrlRow("a.jpg", None, False, first.run)
    assert second.meet("b", "http://b.test/", 2) == UrlRow(None, "HTTP 404", True, first.run)
    assert second.meet("c", "http://c.test/", 3) == UrlRow(None, "HTTP 503", False, first.run)
    # Remembered: the permanent failure; this run's own (none yet). d was not met: its
    # transient failure is no longer reported.
    assert list(second.failures()) == [("http://b.test/", "HTTP 404")]
    second.forget_files()
    second.list_files([("a", "a.jpg")])
    assert second.file_on_disk("a") == "a.jpg" and second.file_on_disk("b") is None
    second.close()
    third = UrlState(path)
    assert third.meet("a", "http://a.test/a.jpg", 1) == UrlRow(None, None, False, second.run)
    third.close()


def test_a_file_that_is_not_a_state_is_a_download_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(DownloadError, match="cannot use the download state"):
        UrlState(path)
