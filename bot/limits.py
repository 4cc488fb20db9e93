"""How often: each user may ask the bot, and the bot may call Telegram."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError
from telegram.ext import AIORateLimiter

log = logging.getLogger(__name__)

WINDOW_S = 60.0
NETWORK_RETRIES = 6
RETRY_AFTER_RETRIES = 5
LOGGED_WAIT_S = 0.001
"""Shorter waits for the rate limit are the limiter's own overhead: not logged."""
BEST_EFFORT = frozenset({"sendChatAction"})
"""Calls that are neither throttled nor retried: a missed "typing…" harms no one."""

DOWNLOAD_LIMIT = 20 * 1024 * 1024
"""Telegram lets bots download files up to 20 MB."""


class UserRateLimiter:
    """At most `per_minute` requests per user in any sliding 60-second window (0 = no limit).

    Users idle for a whole window are forgotten (swept once per window), so the state holds
    only the users of the last minute, however many came before."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._seen: dict[int, deque[float]] = defaultdict(deque)
        self._swept_at = clock()

    @property
    def tracked(self) -> int:
        """How many users the limiter holds state for."""
        return len(self._seen)

    def check(self, user_id: int) -> float | None:
        """Count a request of `user_id`: None when allowed, else seconds until the next
        request would be allowed (refused requests are not counted)."""
        if self.per_minute <= 0:
            return None
        now = self._clock()
        if now - self._swept_at >= WINDOW_S:
            self._sweep(now)
        seen = self._seen[user_id]
        while seen and now - seen[0] >= WINDOW_S:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return WINDOW_S - (now - seen[0])
        seen.append(now)
        return None

    def _sweep(self, now: float) -> None:
        idle = [user for user, seen in self._seen.items() if not seen or now - seen[-1] >= WINDOW_S]
        for user in idle:
            del self._seen[user]
        self._swept_at = now


class AskSlots:
    """Who may queue a question for BLIP-2: one pending question per user and at most
    `capacity` in the whole bot (answers take seconds each, one at a time). Beyond that a
    question is refused at once instead of queueing, so /ask can never hold every update
    slot and starve searches."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pending: set[int] = set()

    def claim(self, user_id: int) -> Literal["ok", "pending", "busy"]:
        """Take a slot for `user_id`: "ok" (call `release` when answered), "pending" (this
        user already has a question queued) or "busy" (the queue is full)."""
        if user_id in self._pending:
            return "pending"
        if len(self._pending) >= self.capacity:
            return "busy"
        self._pending.add(user_id)
        return "ok"

    def release(self, user_id: int) -> None:
        self._pending.discard(user_id)


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
    Telegram hiccup delays a reply instead of losing it.

    Each request that had to wait for the flood limits (its turn, or a RetryAfter) logs how
    long at DEBUG: how much of a slow reply was Telegram's rate limit, not the bot."""

    def __init__(
        self, network_retries: int = NETWORK_RETRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(max_retries=RETRY_AFTER_RETRIES)
        self.network_retries = network_retries
        self._clock = clock

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
                return await self._paced(callback, args, kwargs, endpoint, data, rate_limit_args)
            except (BadRequest, Forbidden, InvalidToken, Conflict):
                raise  # our request is wrong: retrying cannot help
            except NetworkError as err:
                if attempt == self.network_retries:
                    raise
                log.warning("Telegram %s failed (%s): retry in %.1f s", endpoint, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    async def _paced(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        """AIORateLimiter's request (flood limits, RetryAfter), timing what it waited: its
        whole time less the time of the calls themselves."""
        in_calls = 0.0

        async def timed(*call_args: Any, **call_kwargs: Any) -> Any:
            nonlocal in_calls
            started = self._clock()
            try:
                return await callback(*call_args, **call_kwargs)
            finally:
                in_calls += self._clock() - started

        started = self._clock()
        try:
            return await super().process_request(
                timed, args, kwargs, endpoint, data, rate_limit_args
            )
        finally:
            waited = self._clock() - started - in_calls
            if waited >= LOGGED_WAIT_S:
                log.debug(
                    "%s to chat %s waited %.3f s for the rate limit",
                    endpoint,
                    data.get("chat_id"),
                    waited,
                )
