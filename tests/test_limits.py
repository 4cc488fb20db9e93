from __future__ import annotations

import asyncio
import logging

import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut

from bot.limits import AskSlots, RetryingRateLimiter, UserRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_per_user() -> None:
    clock = Clock()
    limiter = UserRateLimiter(3, clock=clock)
    assert [limiter.check(1) for _ in range(3)] == [None, None, None]
    assert limiter.check(1) == pytest.approx(60.0)
    assert limiter.check(2) is None  # another user has their own window
    clock.now += 20
    assert limiter.check(1) == pytest.approx(40.0)
    clock.now += 40
    assert limiter.check(1) is None  # the first request left the window
    assert limiter.check(1) is None and limiter.check(1) is None
    assert limiter.check(1) is not None


def test_idle_users_are_forgotten() -> None:
    clock = Clock()
    limiter = UserRateLimiter(3, clock=clock)
    for user in range(10_000):
        limiter.check(user)
    assert limiter.tracked == 10_000
    clock.now += 30
    limiter.check(1)
    assert limiter.tracked == 10_000  # all still inside the window
    clock.now += 31
    limiter.check(5)  # user 1 asked 31 s ago: kept; the 9,998 idle ones are gone
    assert limiter.tracked == 2
    assert [limiter.check(1), limiter.check(1)] == [None, None]
    assert limiter.check(1) is not None  # user 1's window survived the sweep


def test_ask_slots_one_per_user_and_bounded() -> None:
    slots = AskSlots(2)
    assert slots.claim(1) == "ok"
    assert slots.claim(1) == "pending"
    assert slots.claim(2) == "ok"
    assert slots.claim(3) == "busy"
    slots.release(1)
    assert slots.claim(3) == "ok"
    slots.release(2)
    slots.release(2)  # releasing twice is harmless
    assert slots.claim(1) == "ok"


def test_refused_requests_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = UserRateLimiter(1, clock=clock)
    assert limiter.check(5) is None
    for _ in range(10):
        clock.now += 5
        limiter.check(5)
    clock.now += 10.1
    assert limiter.check(5) is None


def test_zero_means_unlimited() -> None:
    limiter = UserRateLimiter(0)
    assert all(limiter.check(1) is None for _ in range(1000))


def _flaky(failures: list[Exception]):
    calls: list[str] = []

    async def callback(endpoint: str, data: dict) -> bool:
        calls.append(endpoint)
        if failures:
            raise failures.pop(0)
        return True

    return callback, calls


def _request(limiter: RetryingRateLimiter, callback, endpoint: str):
    return limiter.process_request(
        callback=callback,
        args=(endpoint, {}),
        kwargs={},
        endpoint=endpoint,
        data={"chat_id": 1},
        rate_limit_args=None,
    )


def test_network_errors_and_5xx_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr("bot.limits.asyncio.sleep", no_sleep)
    callback, calls = _flaky([NetworkError("Bad Gateway"), TimedOut(), NetworkError("x")])
    assert asyncio.run(_request(RetryingRateLimiter(), callback, "sendMediaGroup")) is True
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_bad_requests_are_not_retried() -> None:
    callback, calls = _flaky([BadRequest("message is too long")])
    with pytest.raises(BadRequest):
        asyncio.run(_request(RetryingRateLimiter(), callback, "sendMessage"))
    assert calls == ["sendMessage"]


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(seconds: float) -> None:
        pass

    monkeypatch.setattr("bot.limits.asyncio.sleep", no_sleep)
    callback, calls = _flaky([NetworkError("down")] * 20)
    with pytest.raises(NetworkError):
        asyncio.run(_request(RetryingRateLimiter(network_retries=3), callback, "sendMessage"))
    assert len(calls) == 4


def test_chat_actions_are_best_effort() -> None:
    callback, calls = _flaky([NetworkError("Bad Gateway")])
    with pytest.raises(NetworkError):
        asyncio.run(_request(RetryingRateLimiter(), callback, "sendChatAction"))
    assert calls == ["sendChatAction"]  # not retried: the next one comes in 4.5 s anyway


def test_waits_for_the_rate_limit_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr("telegram.ext._aioratelimiter.asyncio.sleep", sleep)
    callback, calls = _flaky([RetryAfter(2)])
    limiter = RetryingRateLimiter(clock=lambda: now[0])

    async def two_requests() -> None:
        assert await _request(limiter, callback, "sendMediaGroup") is True
        assert await _request(limiter, callback, "sendMessage") is True

    with caplog.at_level(logging.DEBUG, logger="bot.limits"):
        asyncio.run(two_requests())
    assert calls == ["sendMediaGroup"] * 2 + ["sendMessage"]
    # PTB waits retry_after + 0.1 s; the request that did not wait logs nothing.
    assert [r.getMessage() for r in caplog.records] == [
        "sendMediaGroup to chat 1 waited 2.100 s for the rate limit"
    ]


def test_once_per_window_per_user_and_bounded() -> None:
    from bot.limits import OncePerWindow

    clock = Clock()
    once = OncePerWindow(60, max_users=3, clock=clock)
    assert [once.allow(1) for _ in range(20)] == [True] + [False] * 19
    assert once.allow(2)  # another user
    clock.now += 60
    assert once.allow(1)
    for user in range(100, 200):
        once.allow(user)
    assert len(once) == 3
