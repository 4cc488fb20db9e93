"""What the index holds per vector, as typed records, and their Chroma metadata form.

Chroma metadata values are scalars or non-empty lists of one scalar type; these records
convert themselves to and from that shape, so no module passes string-keyed dicts around.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

Metadata = dict[str, Any]


class Record(Protocol):
    """A record the store can hold: it has an id and round-trips through Chroma metadata."""

    kind: ClassVar[str]
    id: str

    def to_metadata(self) -> Metadata: ...

    @classmethod
    def from_metadata(cls, id: str, metadata: Metadata) -> Record: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class ImageRecord:
    """One indexed picture."""

    kind: ClassVar[str] = "images"

    id: str
    """Stable id: the COCO image id, or a hash of the path relative to an indexed folder."""
    path: str
    """Where the file is (absolute)."""
    split: str = ""
    """train2014, val2014, or "folder"."""
    width: int = 0
    height: int = 0
    captions: tuple[str, ...] = ()
    file_size: int = 0
    """Size in bytes when indexed: a change means re-embed."""
    mtime_ns: int = 0
    """Modification time when indexed: a change means re-embed."""
    url: str = ""
    """Where the picture was downloaded from (URL-list indexes), else ""."""
    categories: tuple[str, ...] = ()
    """Names of the COCO categories of the objects in the picture ("dog", "hot dog"), sorted;
    stored as a list (Chroma filters it with `$contains`) when there are any."""

    def to_metadata(self) -> Metadata:
        metadata: Metadata = {
            "path": self.path,
            "split": self.split,
            "width": self.width,
            "height": self.height,
            "file_size": self.file_size,
            "mtime_ns": self.mtime_ns,
        }
        if self.captions:
            metadata["captions"] = list(self.captions)
        if self.url:
            metadata["url"] = self.url
        if self.categories:
            metadata["categories"] = list(self.categories)
        return metadata

    @classmethod
    def from_metadata(cls, id: str, metadata: Metadata) -> ImageRecord:
        return cls(
            id=id,
            path=str(metadata.get("path", "")),
            split=str(metadata.get("split", "")),
            width=int(metadata.get("width", 0)),
            height=int(metadata.get("height", 0)),
            captions=tuple(metadata.get("captions") or ()),
            file_size=int(metadata.get("file_size", 0)),
            mtime_ns=int(metadata.get("mtime_ns", 0)),
            url=str(metadata.get("url", "")),
            categories=tuple(str(c) for c in metadata.get("categories") or ()),
        )


@dataclass(frozen=True)
class CaptionRecord:
    """One caption of a picture, embedded as text (the `<COLLECTION>_captions` collection)."""

    kind: ClassVar[str] = "captions"

    id: str
    """`<image id>:<n>`, n = the caption's position among the picture's captions."""
    image_id: str
    caption: str
    split: str = ""
    """The split of the picture, so a refresh of one split leaves the others alone."""

    def to_metadata(self) -> Metadata:
        return {"image_id": self.image_id, "caption": self.caption, "split": self.split}

    @classmethod
    def from_metadata(cls, id: str, metadata: Metadata) -> CaptionRecord:
        return cls(
            id=id,
            image_id=str(metadata.get("image_id", "")),
            caption=str(metadata.get("caption", "")),
            split=str(metadata.get("split", "")),
        )
