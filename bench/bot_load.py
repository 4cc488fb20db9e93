"""The bot under load: `python -m bot` (ViT-B/32 architecture) against the fake Telegram
server, 20 users × 5 text queries at once, with micro-batching off and on, side by side.
A reply's time runs from its query to the moment the fake server has received the whole
album, after a warm-up of a few other users' queries (not counted); the share of it spent
waiting for Telegram's flood limits (the bot's rate limiter logs each wait at DEBUG) is
reported beside it. Also the bot's peak memory with CLIP loaded.

`measure` returns a `BotLoad`, which renders its JSON and its tables."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    bench_settings,
    make_photos,
    peak_rss_mb,
    percentile,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.report import document, table
from tests.fake_telegram import FakeTelegram

TOP_K = 5
WARM_UP_USERS = 3
"""Users whose one query each warms the bot up (models, caches, connections) first."""
WAIT_LINE = re.compile(r"sendMediaGroup to chat (\d+) waited ([0-9.]+) s for the rate limit")
SUBJECTS = [
    "a dog",
    "two cats",
    "a red bus",
    "a man",
    "a child",
    "a plate of food",
    "a train",
    "a horse",
    "a kite",
    "a bowl of fruit",
]
PLACES = [
    "on a beach",
    "in the rain",
    "in a kitchen",
    "at a station",
    "in a park",
    "on a table",
    "in the snow",
    "at night",
    "in a city street",
    "near a river",
]


@dataclass(frozen=True)
class LoadRun:
    """One burst against one bot process."""

    answered: int
    right_album_size: int
    """Replies that were an album of TOP_K photos."""
    p50_s: float
    p95_s: float
    last_s: float
    rate_limit_share: float
    """The share of the reply time spent waiting for Telegram's flood limits."""
    bot_rss_mb: float


@dataclass(frozen=True)
class EncoderBatching:
    """The text encoder alone: the same queries one by one, then as one batch."""

    queries: int
    singles_ms: float
    batched_ms: float


@dataclass(frozen=True)
class BotLoad:
    """What `measure` found: each run (micro-batching off or on), and the encoder alone."""

    users: int
    per_user: int
    runs: list[tuple[bool, LoadRun]]
    """(micro-batching on, the run), in the order they ran."""
    encoder: EncoderBatching

    @property
    def total(self) -> int:
        return self.users * self.per_user

    def with_micro_batch(self, on: bool) -> list[LoadRun]:
        return [run for batched, run in self.runs if batched == on]

    def to_json(self) -> dict:
        on, off = self.with_micro_batch(True), self.with_micro_batch(False)
        runs = [run for _, run in self.runs]
        return {
            "load_total": self.total,
            "load_answered": min(r.answered for r in runs),
            "load_right_album_size": min(r.right_album_size for r in runs),
            "load_p50_s": _median(on, "p50_s"),
            "load_p95_s": _median(on, "p95_s"),
            "load_rate_limit_share": round(statistics.median(r.rate_limit_share for r in on), 3),
            "load_micro_batch_off": _medians(off),
            "load_micro_batch_on": _medians(on),
            "bot_rss_mb": max(r.bot_rss_mb for r in runs),
            "text_encoder_batching": {
                "singles_ms": self.encoder.singles_ms,
                "batched_ms": self.encoder.batched_ms,
            },
        }

    def to_markdown(self) -> str:
        encoder = self.encoder
        note = (
            f"Reply time: from the query to the whole album received by the fake server, after "
            f"{WARM_UP_USERS} warm-up queries; the last column is the share of it the albums "
            "spent waiting for Telegram's flood limits (30 messages/s, RetryAfter)."
        )
        batching = table(
            "Text encoder alone: the same queries one by one vs one micro-batch",
            ["queries", "one by one ms", "one batch ms", "speed-up"],
            [
                [
                    encoder.queries,
                    encoder.singles_ms,
                    encoder.batched_ms,
                    f"{encoder.singles_ms / encoder.batched_ms:.1f}×",
                ]
            ],
        )
        return document(_runs_table(self), note, batching)


def distinct_queries(n: int) -> list[str]:
    """`n` different queries, so every user asks something of their own."""
    return [f"{SUBJECTS[i % 10]} {PLACES[(i // 10 + i) % 10]}" for i in range(n)]


def one_run(settings, users: int, per_user: int, micro_batch: bool, workdir: Path) -> LoadRun:
    log_path = workdir / f"bot-{'on' if micro_batch else 'off'}.log"
    # Each run starts with no file_ids: the fake server forgets its files between runs.
    for cache in settings.chroma_path.glob("*-telegram-file-ids.sqlite3*"):
        cache.unlink()
    run_settings = settings.model_copy(update={"micro_batch": micro_batch, "log_level": "DEBUG"})
    with FakeTelegram(hide_button_messages=True) as tg:
        proc = start_bot(subprocess_env(run_settings, **tg.env()), workdir, log_path)
        try:
            warm_up(tg)
            user_ids = list(range(5000, 5000 + users))
            queries = iter(distinct_queries(users * per_user))
            asked: dict[int, list[float]] = {user: [] for user in user_ids}
            for _ in range(per_user):
                for user in user_ids:
                    asked[user].append(time.monotonic())
                    tg.inject_text(next(queries), user_id=user)
            latencies, right = [], 0
            for user in user_ids:
                albums = tg.wait_sent(user, per_user, timeout=600)
                # A user's replies are matched to their queries in order (asked within ms).
                for query_time, album in zip(asked[user], albums, strict=True):
                    latencies.append(album.call.received - query_time)
                    right += album.kind == "media_group" and len(album.messages) == TOP_K
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    waited = rate_limit_waits(log_path.read_text(), set(user_ids))
    return LoadRun(
        answered=len(latencies),
        right_album_size=right,
        p50_s=round(percentile(latencies, 50), 2),
        p95_s=round(percentile(latencies, 95), 2),
        last_s=round(max(latencies), 2),
        rate_limit_share=round(waited / sum(latencies), 3),
        bot_rss_mb=round(rss),
    )


def warm_up(tg: FakeTelegram) -> None:
    """One query from each of a few other users, answered before the measured burst."""
    user_ids = range(4000, 4000 + WARM_UP_USERS)
    for user, query in zip(user_ids, distinct_queries(WARM_UP_USERS), strict=True):
        tg.inject_text(f"{query} (warm-up)", user_id=user)
    for user in user_ids:
        tg.wait_sent(user, 1, timeout=300)


def rate_limit_waits(log: str, chat_ids: set[int]) -> float:
    """Seconds the albums to `chat_ids` waited for Telegram's flood limits, from the bot's
    DEBUG log."""
    return sum(
        float(match.group(2))
        for match in WAIT_LINE.finditer(log)
        if int(match.group(1)) in chat_ids
    )


def encoder_only(clip: Path, queries: list[str]) -> EncoderBatching:
    """Encoder milliseconds for these queries one by one vs in one batch (what micro-batching
    saves on the model itself)."""
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(clip))
    encoder.embed_texts(queries)  # warm-up (also loads)
    started = time.perf_counter()
    for query in queries:
        encoder.embed_texts([query])
    singles = time.perf_counter() - started
    started = time.perf_counter()
    encoder.embed_texts(queries)
    batched = time.perf_counter() - started
    return EncoderBatching(len(queries), round(singles * 1000), round(batched * 1000))


def measure(quick: bool, workdir: Path) -> BotLoad:
    """Index the photos, then bursts against the bot with micro-batching off and on, in
    turn; then the text encoder alone."""
    from core.indexing import BuildOptions
    from core.indexing import run as index
    from core.sources.folders import FolderReader

    clip = vit_b32_dir().path
    photos = make_photos(workdir.parent / "photos", 120 if quick else 500)
    settings = bench_settings(
        workdir,
        clip,
        collection="bot_load",
        telegram_bot_token="123456:TEST",
        top_k=TOP_K,
        rate_limit_per_minute=0,
        vqa_enabled=False,
        duplicate_cosine=1.0,  # random weights make every picture a near-duplicate
    )
    index(settings, FolderReader(photos[0].parent), BuildOptions(progress=False))
    users, per_user = (10, 3) if quick else (20, 5)
    # Alternating off/on runs, so drift on a noisy machine hits both alike.
    rounds = 1 if quick else 3
    runs = [
        (micro_batch, one_run(settings, users, per_user, micro_batch, workdir))
        for _ in range(rounds)
        for micro_batch in (False, True)
    ]
    encoder = encoder_only(clip, distinct_queries(min(users * per_user, 32)))
    return BotLoad(users, per_user, runs, encoder)


def _runs_table(result: BotLoad) -> str:
    total = result.total
    return table(
        f"Bot under load: {result.users} users × {result.per_user} text queries at once, "
        "ViT-B/32, fake Telegram on 127.0.0.1",
        [
            "micro-batching",
            "answered",
            "right album",
            "p50 s",
            "p95 s",
            "last s",
            "waiting for Telegram's rate limit",
        ],
        [
            [
                "on" if batched else "off",
                f"{r.answered}/{total}",
                f"{r.right_album_size}/{total}",
                r.p50_s,
                r.p95_s,
                r.last_s,
                f"{r.rate_limit_share:.1%}",
            ]
            for batched, r in result.runs
        ]
        + [
            [
                f"median {label}",
                "",
                "",
                _median(rs, "p50_s"),
                _median(rs, "p95_s"),
                _median(rs, "last_s"),
                f"{statistics.median(r.rate_limit_share for r in rs):.1%}",
            ]
            for label, rs in (
                ("off", result.with_micro_batch(False)),
                ("on", result.with_micro_batch(True)),
            )
        ],
    )


def _medians(runs: list[LoadRun]) -> dict:
    """The median p50 and p95 of `runs`, and the runs themselves."""
    return {
        "p50_s": _median(runs, "p50_s"),
        "p95_s": _median(runs, "p95_s"),
        "runs": [asdict(run) for run in runs],
    }


def _median(runs: list[LoadRun], key: str) -> float:
    return round(statistics.median(getattr(r, key) for r in runs), 2)
