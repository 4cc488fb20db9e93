"""Micro-batching: concurrent async requests coalesced into one batch call in a worker thread.

Batch-while-busy: when the worker is idle a request runs at once (no added latency); the
requests that arrive while it is busy wait and then run together in one call. Under load
this turns N encoder calls into a few, and the event loop never runs the model itself.
A batch that fails is run again one request at a time, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs `batch_fn(items) -> results` (same length, same order) in the event loop's default
    executor, one batch at a time, for requests submitted concurrently with
    `await submit(item)`."""

    def __init__(self, batch_fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        """How many batch calls ran (tests read it)."""

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
            outcomes = await loop.run_in_executor(
                None, self._run_isolated, [item for item, _ in batch]
            )
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, _Failed):
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome)

    def _run_isolated(self, items: list[T]) -> list[R | _Failed]:
        """The batch call; when it raises, each item alone, so one bad request (an
        unreadable query, a model error on one input) fails only itself."""
        try:
            results = list(self._batch_fn(items))
            if len(results) != len(items):
                raise ValueError(f"batch_fn gave {len(results)} results for {len(items)} items")
            return results
        except Exception as err:
            if len(items) == 1:
                return [_Failed(err)]
        outcomes: list[R | _Failed] = []
        for item in items:
            try:
                [result] = self._batch_fn([item])
                outcomes.append(result)
            except Exception as err:
                outcomes.append(_Failed(err))
        return outcomes


class _Failed:
    """One request's error, carried back from the worker thread."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
