from __future__ import annotations

import asyncio
import threading
import time

import pytest

from core.batching import MicroBatcher


def test_concurrent_requests_share_batches_and_keep_their_results() -> None:
    calls: list[list[int]] = []
    threads: set[str] = set()

    def square_all(items: list[int]) -> list[int]:
        calls.append(items)
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # a slow model call, during which more requests arrive
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(square_all, max_batch=8)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    results = asyncio.run(main())
    assert results == [i * i for i in range(20)]
    assert sum(len(c) for c in calls) == 20
    assert len(calls) <= 4  # 20 requests, batches of up to 8: 3 calls, not 20
    assert all(len(c) <= 8 for c in calls)
    assert threading.main_thread().name not in threads  # never on the event loop's thread


def test_an_idle_batcher_runs_a_request_at_once() -> None:
    async def main() -> tuple[str, int]:
        batcher = MicroBatcher(lambda items: [s.upper() for s in items])
        first = await batcher.submit("a")
        await asyncio.sleep(0.01)
        await batcher.submit("b")
        return first, batcher.batches

    assert asyncio.run(main()) == ("A", 2)


def test_a_failing_batch_fails_its_requests_only() -> None:
    def fail_on_bad(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("boom")
        return items

    async def main() -> tuple[object, str]:
        batcher = MicroBatcher(fail_on_bad, max_batch=1)
        failed, ok = await asyncio.gather(
            batcher.submit("bad"), batcher.submit("good"), return_exceptions=True
        )
        return failed, ok

    failed, ok = asyncio.run(main())
    assert isinstance(failed, ValueError)
    assert ok == "good"


def test_a_cancelled_request_does_not_break_the_others() -> None:
    async def main() -> list[int]:
        gate = threading.Event()

        def slow(items: list[int]) -> list[int]:
            gate.wait(2)
            return items

        batcher = MicroBatcher(slow)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # the first batch is running
        doomed = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        doomed.cancel()
        gate.set()
        return [await first, await kept]

    assert asyncio.run(main()) == [1, 3]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_batch=0)
