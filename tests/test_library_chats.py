"""bot.library_chats: each chat's library switch survives a restart; a clear waits for its
confirmation in its own chat, once, for a while."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import library_chats
from bot.library_chats import Clears, LibraryChats


def test_switches_are_kept_across_a_restart(tmp_path: Path) -> None:
    chats = LibraryChats(tmp_path / "chats.sqlite3")
    assert not chats.enabled(-5)
    assert chats.switch(-5, True, by=1) and not chats.switch(-5, True, by=1)
    assert chats.switch(7, True, by=7) and chats.switch(7, False, by=7)
    chats.close()
    again = LibraryChats(tmp_path / "chats.sqlite3")
    assert again.enabled(-5) and not again.enabled(7)


def test_a_clear_is_confirmed_once_in_its_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    clears = Clears()
    nonce = clears.ask(-5)
    assert len(nonce) == 12
    assert not clears.take(nonce, -6)  # pressed in another chat
    assert clears.take(nonce, -5) and not clears.take(nonce, -5)
    late = clears.ask(-5)
    now = library_chats.time.monotonic()
    monkeypatch.setattr(library_chats.time, "monotonic", lambda: now + 601)
    assert not clears.take(late, -5)


def test_waiting_clears_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library_chats, "MAX_CLEARS", 3)
    clears = Clears()
    first = clears.ask(1)
    for chat in range(2, 5):
        clears.ask(chat)
    assert not clears.take(first, 1)
