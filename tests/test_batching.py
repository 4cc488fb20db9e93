from __future__ import annotations

import asyncio
import threading

import pytest

from bot.batching import MicroBatcher


def test_concurrent_requests_share_batches_and_keep_their_results() -> None:
    calls: list[list[int]] = []
    threads: set[str] = set()

    def square_all(items: list[int]) -> list[int]:
        calls.append(items)
        threads.add(threading.current_thread().name)
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(square_all, max_batch=8)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    results = asyncio.run(main())
    assert results == [i * i for i in range(20)]
    assert sum(len(c) for c in calls) == 20
    assert [len(c) for c in calls] == [8, 8, 4]  # 20 requests gathered in one tick: 3 calls
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


def test_one_bad_request_fails_alone_in_a_real_batch() -> None:
    """Several requests gathered into one batch, one of them bad: the batch call fails, yet
    only the bad request gets the error; the others get their results."""
    calls: list[list[str]] = []
    first_running = threading.Event()
    release = threading.Event()

    def fail_on_bad(items: list[str]) -> list[str]:
        calls.append(list(items))
        if items == ["first"]:
            first_running.set()
            release.wait(60)  # busy: the next requests queue into one batch
        if "bad" in items:
            raise ValueError("boom")
        return [item.upper() for item in items]

    async def main() -> tuple[str, list[object]]:
        batcher = MicroBatcher(fail_on_bad, max_batch=8)
        first = asyncio.create_task(batcher.submit("first"))
        await asyncio.to_thread(first_running.wait, 60)
        queued = [asyncio.create_task(batcher.submit(i)) for i in ("a", "bad", "b", "c")]
        await asyncio.sleep(0)  # all four are queued behind the running call
        release.set()
        results = await asyncio.gather(*queued, return_exceptions=True)
        return await first, results

    first, (a, bad, b, c) = asyncio.run(main())
    assert first == "FIRST"
    assert calls[1] == ["a", "bad", "b", "c"]  # a real batch of four
    assert isinstance(bad, ValueError) and str(bad) == "boom"
    assert (a, b, c) == ("A", "B", "C")
    assert sorted(map(tuple, calls[2:])) == [("a",), ("b",), ("bad",), ("c",)]


def test_a_failing_single_request_gets_its_error() -> None:
    def fail(items: list[str]) -> list[str]:
        raise ValueError("boom")

    async def main() -> object:
        batcher = MicroBatcher(fail)
        return (await asyncio.gather(batcher.submit("x"), return_exceptions=True))[0]

    error = asyncio.run(main())
    assert isinstance(error, ValueError) and str(error) == "boom"


def test_a_short_answer_fails_the_batch_not_silently() -> None:
    async def main() -> object:
        batcher = MicroBatcher(lambda items: [])
        return (await asyncio.gather(batcher.submit("x"), return_exceptions=True))[0]

    error = asyncio.run(main())
    assert isinstance(error, ValueError) and "0 results for 1 items" in str(error)


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
