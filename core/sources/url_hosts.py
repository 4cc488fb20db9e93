"""The hosts of a URL-list download: how many fetches each may have at once, and its connections.

For core.sources.url_fetch, whose fetches run in many threads at once. A list names millions of
hosts, so what is kept per host is bounded:

- At most `per_host` fetches at a time from one host: a list is no way to hammer one site.
- Each host has its own httpcore connection pool, of at most `per_host` connections kept alive
  between that host's fetches. One pool for every host would make every request of every
  thread wait on that pool's lock while it scans all its connections (httpcore does so on each
  request and each response closed): at 64 fetches in flight that cost more than the fetches
  themselves (bench/urls.py measured it).
- A host's entry lives while a fetch uses it, and afterwards while it is among the `keep`
  hosts used last; an entry pushed out of those closes its connections.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore

PoolMaker = Callable[[int], httpcore.ConnectionPool]
"""size → a new connection pool of at most that many connections."""


@dataclass
class _Host:
    slots: threading.BoundedSemaphore
    pool: httpcore.ConnectionPool
    users: int = 0
    """Fetches holding or waiting for one of its slots."""


class Hosts:
    """`with hosts.slot(host) as pool:` one of `host`'s `per_host` slots, and its pool."""

    def __init__(self, per_host: int, keep: int, make_pool: PoolMaker) -> None:
        self.per_host, self.keep, self.make_pool = max(1, per_host), max(0, keep), make_pool
        self.lock = threading.Lock()
        self.used: dict[str, _Host] = {}
        self.idle: OrderedDict[str, _Host] = OrderedDict()
        """Hosts no fetch uses now, the one used last at the end."""

    @contextmanager
    def slot(self, host: str) -> Iterator[httpcore.ConnectionPool]:
        with self.lock:
            entry = self.used.get(host) or self.idle.pop(host, None)
            if entry is None:
                slots = threading.BoundedSemaphore(self.per_host)
                entry = _Host(slots, self.make_pool(self.per_host))
            entry.users += 1
            self.used[host] = entry
        try:
            with entry.slots:
                yield entry.pool
        finally:
            self._release(host, entry)

    def close(self) -> None:
        """Close every connection (no fetch may be running)."""
        with self.lock:
            entries = [*self.used.values(), *self.idle.values()]
            self.used.clear()
            self.idle.clear()
        for entry in entries:
            entry.pool.close()

    def _release(self, host: str, entry: _Host) -> None:
        pushed_out: list[_Host] = []
        with self.lock:
            entry.users -= 1
            if entry.users:
                return
            del self.used[host]
            self.idle[host] = entry
            while len(self.idle) > self.keep:
                pushed_out.append(self.idle.popitem(last=False)[1])
        for old in pushed_out:  # no fetch uses it: it left `idle` under the lock
            old.pool.close()
