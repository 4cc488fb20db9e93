"""One lifecycle for every model (immich's InferenceModel shape): `load()`, `loaded`, `close()`.

Who uses it: `DualEncoder` and `VqaModel` subclass `LazyModel` and implement `_load`; the
bot's services load both at start-up (BLIP-2 only with VQA_PRELOAD, else on the first
question) and close both at shutdown; the index builder and the CLI load on first use.

- A model loads once, on first use or on `load()`, from any thread: concurrent first callers
  wait for one load.
- A failed load is not kept: the next use tries again (the operator may have fixed the
  path), but not before `retry_after_s` (a load that ran out of memory must not be retried,
  and fail again, on every request): until then every use raises `ModelUnavailable` at once.
- `close()` frees the weights (and returns cached accelerator memory). A closed model stays
  closed: any use raises `ModelUnavailable` at once instead of loading gigabytes again
  behind the caller's back (at shutdown, say); `load()` opens it again. Calls already
  running finish with the weights they hold.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from core.errors import ModelUnavailable
from core.models.runtime import resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")


class LazyModel(ABC, Generic[T]):
    """A model that loads its weights (a `T`: the model, its processor, ...) lazily and
    thread-safely, and frees them on `close()`. Subclasses implement `_load` and reach the
    weights through `_model()`."""

    def __init__(self, model_name: str, device: str, *, retry_after_s: float = 0.0) -> None:
        self.model_name = model_name
        self.device = resolve_device(device)
        self._retry_after_s = retry_after_s
        self._clock: Callable[[], float] = time.monotonic
        self._weights: T | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._failure: tuple[float, str] | None = None
        """(when, why) of the last failed load."""

    @abstractmethod
    def _load(self) -> T:
        """Load the weights (on `self.device`); raise `ModelUnavailable` when they cannot be."""

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory now."""
        return self._weights is not None

    def load(self) -> None:
        """Load the weights now instead of on first use, or again after `close()` (raises
        `ModelUnavailable`)."""
        with self._lock:
            self._closed = False
        self._model()

    def close(self) -> None:
        """Free the weights; until `load()`, any use raises `ModelUnavailable`."""
        with self._lock:
            self._weights = None
            self._failure = None
            self._closed = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("closed %s", self.model_name)

    def _model(self) -> T:
        """The loaded weights, loading them first when needed."""
        weights = self._weights
        if weights is not None:
            return weights
        with self._lock:
            if self._weights is None:
                self._check_open()
                try:
                    self._weights = self._load()
                except Exception as err:
                    self._failure = (self._clock(), str(err) or type(err).__name__)
                    raise
                self._failure = None
            return self._weights

    def _check_open(self) -> None:
        """Raise `ModelUnavailable` when closed, or when the last load failed too recently."""
        if self._closed:
            raise ModelUnavailable(f"{self.model_name} is closed: load() opens it again")
        if self._failure is None:
            return
        failed_at, why = self._failure
        wait = failed_at + self._retry_after_s - self._clock()
        if wait > 0:
            raise ModelUnavailable(f"{why} (not retried for another {wait:.0f} s)")
