"""Who may use the bot, and how often."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

WINDOW_S = 60.0


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
