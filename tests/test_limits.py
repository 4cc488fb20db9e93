from __future__ import annotations

import pytest

from bot.limits import UserRateLimiter


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
