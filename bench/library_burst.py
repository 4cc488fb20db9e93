"""A chat library under a burst: `python -m bot` (ViT-B/32 architecture, LIBRARY_ENABLED)
against the fake Telegram server. One user searches by words, one query after another,
first while nothing else happens, then while a group with its library on posts 100 photos
(640×480 COCO-like JPEGs) at once; side by side in one run: how long a search takes idle
and during the burst (from the query to the whole album received by the fake server), and
how long the 100 photos take to be added (downloaded, embedded, stored).

`measure` returns a `LibraryBurst`, which renders its JSON and its table."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Timings,
    bench_settings,
    make_photos,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.report import document, table
from tests.fake_telegram import FakeTelegram

GROUP, ADMIN, POSTER, SEARCHER = -1009990000001, 7001, 7002, 7003
QUERIES = [
    f"a {thing} {place}"
    for thing in ("dog", "red bus", "cat", "train", "kite")
    for place in ("on a beach", "in the rain", "in a park", "at night")
]


@dataclass(frozen=True)
class LibraryBurst:
    photos: int
    idle: Timings
    """A text search with nothing else going on."""
    during: Timings
    """The same searches while the burst is being added."""
    during_max_ms: float
    added_s: float
    """From the first photo posted to the last one added."""
    searches_during: int
    """How many of the searches ran while photos were still being added."""

    def to_json(self) -> dict:
        return {
            "library_burst_photos": self.photos,
            "library_search_idle_p50_ms": self.idle.p50_ms,
            "library_search_idle_p95_ms": self.idle.p95_ms,
            "library_search_burst_p50_ms": self.during.p50_ms,
            "library_search_burst_p95_ms": self.during.p95_ms,
            "library_search_burst_max_ms": self.during_max_ms,
            "library_burst_added_s": self.added_s,
            "library_burst_searches_during": self.searches_during,
        }

    def to_markdown(self) -> str:
        rows = [
            ["idle", self.idle.n, self.idle.p50_ms, self.idle.p95_ms],
            [
                f"while {self.photos} photos are added",
                self.during.n,
                self.during.p50_ms,
                self.during.p95_ms,
            ],
        ]
        note = (
            f"The {self.photos} photos were added in {self.added_s:.1f} s "
            f"({self.photos / self.added_s:.1f} photos/s); {self.searches_during} of the "
            f"searches ran while they were, the slowest in {self.during_max_ms:.0f} ms. A "
            "search waits for at most one picture's embedding "
            "(one queue, one worker: `bot/library_ingest.py`)."
        )
        return document(
            table(
                "A text search, idle and during a burst of posted photos (reply time, ms)",
                ["when", "searches", "p50", "p95"],
                rows,
            ),
            note,
        )


def added(log: str) -> int:
    return len(re.findall(rf"library of chat {GROUP}: added message", log))


def searches(tg: FakeTelegram, queries: list[str]) -> list[float]:
    """Each query in turn, once the previous album arrived: its reply times (s)."""
    times = []
    for query in queries:
        since = len(tg.sent_to(SEARCHER))
        asked = time.monotonic()
        tg.inject_text(query, user_id=SEARCHER)
        [album] = tg.wait_sent(SEARCHER, 1, timeout=300, since=since)
        times.append(album.call.received - asked)
    return times


def measure(quick: bool, workdir: Path) -> LibraryBurst:
    from core.indexing import BuildOptions
    from core.indexing import run as index
    from core.sources.folders import FolderReader

    count = 30 if quick else 100
    photos = make_photos(workdir.parent / "photos", 120)
    posted = [p.read_bytes() for p in make_photos(workdir / "posted", count, seed=9)]
    settings = bench_settings(
        workdir,
        vit_b32_dir().path,
        collection="library_burst",
        telegram_bot_token="123456:TEST",
        rate_limit_per_minute=0,
        vqa_enabled=False,
        library_enabled=True,
        duplicate_cosine=1.0,  # random weights make every picture a near-duplicate
    )
    index(settings, FolderReader(photos[0].parent), BuildOptions(progress=False))
    log_path = workdir / "bot-library.log"
    with FakeTelegram(hide_button_messages=True) as tg:
        tg.set_admins(GROUP, ADMIN)
        proc = start_bot(subprocess_env(settings, **tg.env()), workdir, log_path)
        try:
            tg.inject_text("/library on", user_id=ADMIN, chat_id=GROUP)
            tg.wait_sent(GROUP, 1, timeout=120)
            searches(tg, ["a warm-up query", "another warm-up"])
            idle = searches(tg, QUERIES)
            started = time.monotonic()
            for data in posted:
                tg.inject_photo(data, user_id=POSTER, chat_id=GROUP)
            during, ran = [], 0
            while added(log_path.read_text()) < count:
                during += searches(tg, QUERIES[len(during) % len(QUERIES) :][:1])
                ran += added(log_path.read_text()) < count
                if time.monotonic() - started > 600:
                    raise RuntimeError("the burst was not added in 10 minutes")
            added_s = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(60)
    return LibraryBurst(
        count,
        Timings.of(idle),
        Timings.of(during),
        round(max(during) * 1000, 1),
        round(added_s, 1),
        ran,
    )
