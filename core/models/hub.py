"""Asking about a model without loading it and without torch: is it in the local Hugging
Face cache, may the hub be asked, and what does the hub say. Used by the loader
(core.models.runtime) and by the builder's checks before a download
(core.indexing.preflight), which word their own messages from the answer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

HUB_TIMEOUT_S = 10.0
"""One look-up on the Hugging Face hub waits this long at most."""


@dataclass(frozen=True)
class HubAnswer:
    """What one look-up of a model on the hub found."""

    known: bool
    """The hub has the model, or answered something other than "no such model" (loading
    will say more)."""
    unreachable: str | None = None
    """Why the hub could not be asked (None when it answered)."""
    note: str = ""
    """The hub's own words when it answered with an error other than "not found"."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids asking the hub."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def in_hub_cache(name: str, files: Sequence[str] = ("config.json",)) -> bool:
    """Whether one of `files` of model `name` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(name, file), str) for file in files)
    except ValueError:  # not a valid repo id
        return False


def ask_hub(name: str) -> HubAnswer:
    """One quick look-up of `name` on the hub, without retries."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        return HubAnswer(known=False)
    except HfHubHTTPError as err:
        return HubAnswer(known=True, note=first_line(err))
    except Exception as err:  # httpx and OSError: the hub cannot be reached
        return HubAnswer(known=False, unreachable=first_line(err))
    return HubAnswer(known=True)


def hub_endpoint() -> str:
    """The hub's address, for messages."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def first_line(err: BaseException) -> str:
    """An error in one line: its kind and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
