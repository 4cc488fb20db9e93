"""CHROMA_AUTH_TOKEN over plain HTTP to another machine is warned about, once; nothing here
connects anywhere (the headers are built without a connection)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.store.collection_info import (
    _warn_token_in_clear,
    auth_headers,
    is_loopback,
    token_in_clear,
)
from tests.conftest import make_settings

TOKEN = "S3CRET-abc123"


@pytest.fixture(autouse=True)
def _warn_afresh() -> Iterator[None]:
    """Each test starts as a new process would: nothing warned yet."""
    _warn_token_in_clear.cache_clear()
    yield
    _warn_token_in_clear.cache_clear()


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["10.0.0.5", "192.168.1.2", "chroma.internal", "localhost.example.com", "::2"]
)
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_a_token_over_plain_http_to_another_host_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, chroma_host="10.0.0.5", chroma_auth_token=TOKEN)
    assert token_in_clear(settings)
    with caplog.at_level(logging.WARNING, logger="core.store.collection_info"):
        for _ in range(3):  # the store and each GET of `status` build the headers
            assert auth_headers(settings) == {"Authorization": f"Bearer {TOKEN}"}
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "plain HTTP" in warning.getMessage() and "http://10.0.0.5:8000" in warning.getMessage()
    assert "CHROMA_SSL=true" in warning.getMessage() and TOKEN not in caplog.text


@pytest.mark.parametrize(
    "changes",
    [
        {"chroma_ssl": True},
        {"chroma_host": "127.0.0.1"},
        {"chroma_host": "localhost"},
        {"chroma_auth_token": None},
    ],
    ids=["https", "loopback", "localhost", "no-token"],
)
def test_no_warning_when_the_token_stays_safe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, object]
) -> None:
    values: dict[str, object] = {"chroma_host": "10.0.0.5", "chroma_auth_token": TOKEN}
    settings = make_settings(tmp_path, **(values | changes))
    assert not token_in_clear(settings)
    with caplog.at_level(logging.WARNING, logger="core.store.collection_info"):
        auth_headers(settings)
    assert not caplog.records
