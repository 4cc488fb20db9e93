"""Reading a JSON file someone else made (COCO annotations, a Karpathy split): any failure is
one clear line naming the file and the cause, never a traceback. Bounded: a file over
`MAX_JSON_BYTES` is refused unread, and nesting deeper than the parser's recursion limit
(`[[[[...` a hundred thousand deep) is a malformed file, not a RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

MAX_JSON_BYTES = 1_000_000_000
"""The largest JSON file read (bytes). COCO2014's biggest, instances_train2014.json, is about
330 MB; the whole parsed tree is held in memory, several times the file's size."""


def json_object(value: object, max_chars: int) -> dict | None:
    """The JSON object a stored text holds (a metadata value of the untrusted store), or None
    when it is no text, longer than `max_chars`, not JSON, or not an object."""
    if not isinstance(value, str) or len(value) > max_chars:
        return None
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_json(
    path: Path,
    what: str,
    error: type[Exception],
    *,
    hint: str = "",
    max_bytes: int = MAX_JSON_BYTES,
) -> object:
    """The parsed contents of `path`, or `error` saying why `what` (e.g. "annotation file")
    could not be read; `hint` is added to a malformed file's message (what to do about it).
    A file over `max_bytes` is refused before it is parsed."""
    text = _read_text(path, what, error, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(
            f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
            f"{err.msg}){hint}"
        ) from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be read{hint}") from None


def _read_text(path: Path, what: str, error: type[Exception], max_bytes: int) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) <= max_bytes:
            return data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} cannot be read: {err}") from None
    raise error(f"{what} {path} is larger than {max_bytes:,} bytes: refused")
