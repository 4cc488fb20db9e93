"""Micro-batching: concurrent async requests coalesced into one batch call in a worker thread.

Batch-while-busy: when the worker is idle a request runs at once (no added latency); the
requests that arrive while it is busy wait and then run together in one call. Under load
this turns N encoder calls into a few, and the event loop never runs the model itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs `batch_fn(items) -> results` (same length, same order) in `executor`, one batch
    at a time, for requests submitted concurrently with `await submit(item)`."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        executor: Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._executor = executor
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        """How many batch calls ran (for tests and benchmarks)."""

    async def submit(self, item: T) -> R:
        """Queue `item`, wait for its batch to run, return its result (or raise its error)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(0)  # let requests submitted in this same tick join the batch
            batch = [(i, f) for i, f in self._pending[: self._max_batch] if not f.cancelled()]
            del self._pending[: self._max_batch]
            if not batch:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(
                    self._executor, self._batch_fn, [item for item, _ in batch]
                )
            except Exception as err:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
