"""Domain errors. core raises them; entry points and the bot turn them into clear messages.

Every message is written for the person who will read it (a user in the chat or an
operator at a terminal): what went wrong and, where there is one, what to do about it.
A message may repeat what a user wrote (a #hashtag, a word), so the bot logs it above DEBUG
only for the errors that say they are about the host (`quotes_user` False).
"""

from __future__ import annotations

from enum import Enum


class SearchBotError(Exception):
    """Base of every error this project raises on purpose. `str(err)` is the message."""

    exit_code = 1
    quotes_user = True
    """Whether the message may repeat what a user wrote; False only for errors about the host
    (its settings, store, models), whose messages an operator needs in the logs."""


class ConfigError(SearchBotError):
    """A setting has a bad value."""

    exit_code = 2
    quotes_user = False


class EmptyQuery(SearchBotError):
    """A search text with nothing to search for."""

    exit_code = 2


class IndexEmpty(SearchBotError):
    """The collection is missing or holds no vectors yet."""

    exit_code = 2
    quotes_user = False


class IndexGone(IndexEmpty):
    """The open collection was dropped or replaced (e.g. `index_builder.py --rebuild`): open
    it again."""


class IndexRebuilding(IndexEmpty):
    """The collection that was searched a moment ago is missing or empty: being rebuilt."""


class ImageProblem(str, Enum):
    """Why a picture cannot be used, as a person can act on it: the bot tells a user each one
    in their own terms (send a smaller copy, send a picture, send it again)."""

    TOO_MANY_PIXELS = "too many pixels"
    """Over MAX_IMAGE_PIXELS (or Pillow's decompression-bomb limit): refused before decoding."""
    NOT_A_PICTURE = "not a picture"
    """Not an image, or a format the decoder does not open."""
    DAMAGED = "damaged"
    """Empty, truncated or corrupt: the start of a picture, but no picture can be decoded."""
    GONE = "gone"
    """No longer at hand (a file that disappeared, a photo whose bytes were let go)."""
    UNREADABLE = "unreadable"
    """Anything else that could not be read (the default)."""


class BadImage(SearchBotError):
    """An image that cannot or must not be decoded (corrupt, truncated, too large, not an image).

    `str(err)` is the detail for logs and the CLI; `reason` says which problem it is, and for
    TOO_MANY_PIXELS `size` (width, height; None when unknown) and `limit` (pixels) say by how
    much, so the bot can tell a user what to do."""

    def __init__(
        self,
        message: str,
        *,
        reason: ImageProblem = ImageProblem.UNREADABLE,
        size: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.size = size
        self.limit = limit


class ModelUnavailable(SearchBotError):
    """Model weights could not be loaded (not downloaded, offline, wrong path)."""

    quotes_user = False


class ModelMismatch(SearchBotError):
    """A collection was built with another model or embedding dimension than the configured one."""

    quotes_user = False


class StoreUnavailable(SearchBotError):
    """The vector store could not be reached or opened."""

    quotes_user = False


class DatasetError(SearchBotError):
    """A dataset on disk is missing or malformed (annotation file, image folder)."""


class BadEvalInput(DatasetError):
    """An evaluation's input is missing or malformed: a split file, the COCO folder, --limit."""

    exit_code = 2


class UnsafeRemoval(SearchBotError):
    """A refresh would remove a large part of the index (an empty or unmounted data folder?);
    nothing was changed. The operator confirms a real removal with `--prune`."""

    exit_code = 2


class StoreBusy(SearchBotError):
    """Another index builder is writing to the same embedded store."""


class DownloadError(SearchBotError):
    """A download failed for good (after its retries): the message names the URL and why."""


class UnknownCategory(SearchBotError):
    """A #hashtag that names no category of the index; the message suggests the closest."""

    exit_code = 2


class NoCategories(SearchBotError):
    """A #hashtag on an index that records no categories (folder and URL-list indexes)."""

    exit_code = 2


class UnknownPicture(SearchBotError):
    """A "more like this" of a picture id the index does not hold (any more)."""
