"""The bot under load: `python -m bot` (ViT-B/32 architecture) against the fake Telegram
server, 20 users × 5 text queries at once, with micro-batching off and on, side by side.
A reply's time runs from its query to the moment the fake server has received the whole
album, after a warm-up of a few other users' queries (not counted); the share of it spent
waiting for Telegram's flood limits (the bot's rate limiter logs each wait at DEBUG) is
reported beside it. Also the bot's peak memory with CLIP loaded."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from bench.common import (
    bench_settings,
    make_photos,
    peak_rss_mb,
    percentile,
    start_bot,
    subprocess_env,
    table,
    vit_b32_dir,
)
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


def distinct_queries(n: int) -> list[str]:
    """`n` different queries, so every user asks something of their own."""
    return [f"{SUBJECTS[i % 10]} {PLACES[(i // 10 + i) % 10]}" for i in range(n)]


def one_run(settings, users: int, per_user: int, micro_batch: bool, workdir: Path) -> dict:
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
    return {
        "answered": len(latencies),
        "right_album_size": right,
        "p50_s": round(percentile(latencies, 50), 2),
        "p95_s": round(percentile(latencies, 95), 2),
        "last_s": round(max(latencies), 2),
        "rate_limit_share": round(waited / sum(latencies), 3),
        "bot_rss_mb": round(rss),
    }


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


def encoder_only(clip: Path, queries: list[str]) -> dict[str, float]:
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
    return {"singles_ms": round(singles * 1000), "batched_ms": round(batched * 1000)}


def run(quick: bool, workdir: Path) -> dict:
    from core.indexing.build import run as index
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
    index(settings, FolderReader(photos[0].parent), progress=False)
    users, per_user = (10, 3) if quick else (20, 5)
    # Alternating off/on runs, so drift on a noisy machine hits both alike.
    rounds = 1 if quick else 3
    runs = [
        (micro_batch, one_run(settings, users, per_user, micro_batch, workdir))
        for _ in range(rounds)
        for micro_batch in (False, True)
    ]
    on = [r for batched, r in runs if batched]
    off = [r for batched, r in runs if not batched]
    total = users * per_user
    encoder = encoder_only(clip, distinct_queries(min(total, 32)))
    table(
        f"Bot under load: {users} users × {per_user} text queries at once, ViT-B/32, "
        "fake Telegram on 127.0.0.1",
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
                label,
                f"{r['answered']}/{total}",
                f"{r['right_album_size']}/{total}",
                r["p50_s"],
                r["p95_s"],
                r["last_s"],
                f"{r['rate_limit_share']:.1%}",
            ]
            for label, r in [("on" if batched else "off", r) for batched, r in runs]
        ]
        + [
            [
                f"median {label}",
                "",
                "",
                _median(rs, "p50_s"),
                _median(rs, "p95_s"),
                _median(rs, "last_s"),
                f"{statistics.median(r['rate_limit_share'] for r in rs):.1%}",
            ]
            for label, rs in (("off", off), ("on", on))
        ],
    )
    print(
        f"Reply time: from the query to the whole album received by the fake server, after "
        f"{WARM_UP_USERS} warm-up queries; the last column is the share of it the albums "
        "spent waiting for Telegram's flood limits (30 messages/s, RetryAfter)."
    )
    table(
        "Text encoder alone: the same queries one by one vs one micro-batch",
        ["queries", "one by one ms", "one batch ms", "speed-up"],
        [
            [
                min(total, 32),
                encoder["singles_ms"],
                encoder["batched_ms"],
                f"{encoder['singles_ms'] / encoder['batched_ms']:.1f}×",
            ]
        ],
    )
    return {
        "load_total": total,
        "load_answered": min(r["answered"] for _, r in runs),
        "load_right_album_size": min(r["right_album_size"] for _, r in runs),
        "load_p50_s": _median(on, "p50_s"),
        "load_p95_s": _median(on, "p95_s"),
        "load_rate_limit_share": round(statistics.median(r["rate_limit_share"] for r in on), 3),
        "load_micro_batch_off": {
            "p50_s": _median(off, "p50_s"),
            "p95_s": _median(off, "p95_s"),
            "runs": off,
        },
        "load_micro_batch_on": {
            "p50_s": _median(on, "p50_s"),
            "p95_s": _median(on, "p95_s"),
            "runs": on,
        },
        "bot_rss_mb": max(r["bot_rss_mb"] for _, r in runs),
        "text_encoder_batching": encoder,
    }


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)
