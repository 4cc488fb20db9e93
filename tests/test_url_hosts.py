"""The hosts of a URL-list download: at most `per_host` fetches each, a connection pool of its
own, and what is kept of the hosts no fetch uses bounded (no network: pools are stand-ins)."""

from __future__ import annotations

import threading
import time

from core.sources.url_hosts import Hosts


class FakePool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.closed = False

    def close(self) -> None:
        self.closed = True


def hosts(per_host: int = 2, keep: int = 2) -> tuple[Hosts, list[FakePool]]:
    made: list[FakePool] = []

    def make_pool(size: int) -> FakePool:
        made.append(FakePool(size))
        return made[-1]

    return Hosts(per_host, keep, make_pool), made  # type: ignore[arg-type]


def test_each_host_has_its_own_pool_of_per_host_connections() -> None:
    slots, made = hosts(per_host=3)
    with slots.slot("a.test") as a, slots.slot("a.test") as a_again, slots.slot("b.test") as b:
        assert a is a_again and a is not b
    assert [pool.size for pool in made] == [3, 3]


def test_a_host_runs_at_most_per_host_fetches_at_once() -> None:
    slots, _ = hosts(per_host=2)
    running, most = 0, 0
    lock = threading.Lock()

    def fetch() -> None:
        nonlocal running, most
        with slots.slot("a.test"):
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_a_host_used_again_keeps_its_connections() -> None:
    slots, made = hosts(keep=2)
    with slots.slot("a.test") as first:
        pass
    with slots.slot("a.test") as second:
        pass
    assert first is second and not first.closed and len(made) == 1


def test_only_the_hosts_used_last_keep_their_connections() -> None:
    slots, made = hosts(keep=2)
    for host in ("a.test", "b.test", "c.test"):
        with slots.slot(host):
            pass
    a, b, c = made
    assert a.closed and not b.closed and not c.closed
    with slots.slot("a.test") as again:
        assert again is not a and not again.closed  # a fresh pool
    assert b.closed  # now the host used longest ago
    slots.close()
    assert all(pool.closed for pool in made)


def test_a_host_in_use_is_never_closed() -> None:
    slots, made = hosts(keep=0)
    with slots.slot("a.test") as busy:
        with slots.slot("b.test"):
            pass
        assert not busy.closed and made[1].closed
    assert busy.closed
