"""How often: each user may ask the bot, and the bot may call Telegram."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError
from telegram.ext import AIORateLimiter

log = logging.getLogger(__name__)

WINDOW_S = 60.0
NETWORK_RETRIES = 6
RETRY_AFTER_RETRIES = 5
BEST_EFFORT = frozenset({"sendChatAction"})
"""Calls that are neither throttled nor retried: a missed "typing…" harms no one."""


class UserRateLimiter:
    """At most `per_minute` requests per user in any sliding 60-second window (0 = no limit)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._seen: dict[int, deque[float]] = defaultdict(deque)

    def check(self, user_id: int) -> float | None:
        """Count a request of `user_id`: None when allowed, else seconds until the next
        request would be allowed (refused requests are not counted)."""
        if self.per_minute <= 0:
            return None
        now = self._clock()
        seen = self._seen[user_id]
        while seen and now - seen[0] >= WINDOW_S:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return WINDOW_S - (now - seen[0])
        seen.append(now)
        return None


class OncePerWindow:
    """Whether a user may be told something again: at most once per `window_s` per user (a
    refusal, not a flood of them). Remembers at most `max_users` users, forgetting the
    longest-unseen first, so a crowd of strangers cannot grow it without bound."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_users = max_users
        self._clock = clock
        self._last: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, user_id: int) -> bool:
        """True (and remembered) when `user_id` was not told anything in the last window."""
        now = self._clock()
        last = self._last.get(user_id)
        if last is not None and now - last < self.window_s:
            return False
        self._last[user_id] = now
        self._last.move_to_end(user_id)
        while len(self._last) > self.max_users:
            self._last.popitem(last=False)
        return True


class RetryingRateLimiter(AIORateLimiter):
    """Keeps to Telegram's flood limits (30 messages/s overall, 20/min per group), waits out
    429 RetryAfter, and retries 5xx and network errors with exponential backoff, so a
    Telegram hiccup delays a reply instead of losing it."""

    def __init__(self, network_retries: int = NETWORK_RETRIES) -> None:
        super().__init__(max_retries=RETRY_AFTER_RETRIES)
        self.network_retries = network_retries

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        if endpoint in BEST_EFFORT:
            return await callback(*args, **kwargs)
        delay = 0.5
        for attempt in range(self.network_retries + 1):
            try:
                return await super().process_request(
                    callback, args, kwargs, endpoint, data, rate_limit_args
                )
            except (BadRequest, Forbidden, InvalidToken, Conflict):
                raise  # our request is wrong: retrying cannot help
            except NetworkError as err:
                if attempt == self.network_retries:
                    raise
                log.warning("Telegram %s failed (%s): retry in %.1f s", endpoint, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
