"""Reading a JSON file someone else made (COCO annotations, a Karpathy split): any failure is
one clear line naming the file and the cause, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path, what: str, error: type[Exception], *, hint: str = "") -> object:
    """The parsed contents of `path`, or `error` saying why `what` (e.g. "annotation file")
    could not be read; `hint` is added to a malformed file's message (what to do about it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except json.JSONDecodeError as err:
        raise error(
            f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
            f"{err.msg}){hint}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} cannot be read: {err}") from None
