"""What a chat's library keeps of one picture: its vector (in the store) and this record.
Never the picture's bytes: results are sent by Telegram's file_id.

Records come back from the store, which is untrusted: every field is checked and bounded
when read (`from_metadata`), and a malformed record reads as one of no chat (chat 0), which
no search, count or removal of a real chat ever matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from core.store.records import Metadata

if TYPE_CHECKING:
    from core.config import Settings

MAX_CAPTION_CHARS = 1024
"""Telegram's caption limit."""
MAX_FILE_ID_CHARS = 256
_FILE_UNIQUE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def library_collection(settings: Settings) -> str:
    """The libraries' collection name: `<COLLECTION>-library` (next to the index)."""
    return f"{settings.collection}-library"


def library_id(chat_id: int, file_unique_id: str) -> str:
    """The record id of a picture in a chat's library: one per picture and chat, so a
    picture posted twice in a chat is stored once, and in two chats twice (each its own)."""
    if not _FILE_UNIQUE_ID.fullmatch(file_unique_id):
        raise ValueError(f"not a Telegram file_unique_id: {file_unique_id[:80]!r}")
    return f"{chat_id}:{file_unique_id}"


def is_library_id(record_id: str) -> bool:
    """Whether `record_id` names a library picture (rather than an indexed one)."""
    chat, sep, unique = record_id.partition(":")
    return bool(sep) and chat.lstrip("-").isdigit() and bool(_FILE_UNIQUE_ID.fullmatch(unique))


@dataclass(frozen=True)
class LibraryRecord:
    """One picture of a chat's library: where it was posted, by whom and when, and the
    Telegram file_id it is sent by."""

    kind: ClassVar[str] = "library"

    id: str
    chat_id: int
    message_id: int
    """The message that posted it (results reply to it: a tap jumps there)."""
    sender_id: int
    date: int
    """When it was posted (Unix seconds)."""
    file_id: str
    file_unique_id: str
    caption: str = ""
    is_document: bool = False
    """Posted as a file (a document's file_id cannot be sent as a photo: it is uploaded as
    one the first time, and its photo file_id cached)."""

    def to_metadata(self) -> Metadata:
        return {
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "sender_id": self.sender_id,
            "date": self.date,
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "caption": self.caption[:MAX_CAPTION_CHARS],
            "document": self.is_document,
        }

    @classmethod
    def from_metadata(cls, id: str, metadata: Metadata) -> LibraryRecord:
        file_id = _text(metadata.get("file_id"), MAX_FILE_ID_CHARS)
        unique = _text(metadata.get("file_unique_id"), 64)
        chat_id = _integer(metadata.get("chat_id"))
        well_formed = (
            bool(file_id) and _FILE_UNIQUE_ID.fullmatch(unique) and id == f"{chat_id}:{unique}"
        )
        return cls(
            id=id,
            chat_id=chat_id if well_formed else 0,
            message_id=_integer(metadata.get("message_id")),
            sender_id=_integer(metadata.get("sender_id")),
            date=_integer(metadata.get("date")),
            file_id=file_id,
            file_unique_id=unique,
            caption=_text(metadata.get("caption"), MAX_CAPTION_CHARS),
            is_document=metadata.get("document") is True,
        )


def _integer(value: Any) -> int:
    """An int field as stored (bools and anything else read as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""
