"""Soak: the real `python -m bot` (ViT-B/32 architecture, a tiny BLIP-2 for /ask) against the
fake Telegram server for 10 minutes (--quick: 2), 100 users sending text, photos, button
presses (More, Similar, Full size) and /ask at a steady total rate, each user a little below
the per-user rate limit. Every minute: messages sent and answered, errors, p50/p95 reply
time, and the bot's RSS. The goal: every message answered, and RSS flat (the last minute
within 5% of the second).

A user waits for the reply to their last message before the next (a person does), and a
reply's time runs from the message to the moment the fake server has received the reply's
last part: the buttons under an album, the last file of Full size, the answer to /ask.

`measure` returns a `Soak`, which renders its JSON and its table and verdict.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    bench_settings,
    coco_like_jpeg,
    make_photos,
    percentile,
    rss_mb,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.report import document, table
from tests.fake_telegram import Call, FakeTelegram

log = logging.getLogger(__name__)

USERS = 100
TOTAL_RATE = 10.0
"""Messages per second from all users together, with a margin below what the bot sustained
in shorter runs on 2 shared cores (docs/benchmarks.md)."""
PACE = 0.75
"""Each user sends at this fraction of the bot's per-user rate limit: a little below it."""
RATE_LIMIT_PER_MINUTE = math.ceil(60 * TOTAL_RATE / USERS / PACE)
"""The bot's per-user limit in the soak (RATE_LIMIT_PER_MINUTE)."""
MINUTES, QUICK_MINUTES = 10, 2
DRAIN_S = 60.0
"""How long the last replies may take after the last message before they count unanswered."""
PHOTOS = 200
USER_PHOTOS = 20
TICK_S = 0.05
SEARCHES = frozenset({"text", "photo", "more", "similar"})
QUESTIONS = ["what is in the picture?", "what color is it?", ""]
WORDS = ["a dog", "a red bus", "two cats", "a kitchen", "a beach", "a train", "a horse"]


@dataclass
class Action:
    """One message of a user and what became of it."""

    user: int
    kind: str
    """"text", "photo", "more", "similar", "full" or "ask"."""
    sent_at: float
    message_id: int = 0
    query_id: str = ""
    files_expected: int = 0
    files: int = 0
    done_at: float | None = None
    ok: bool = False


@dataclass
class User:
    id: int
    rng: random.Random
    next_at: float
    pending: Action | None = None
    buttons: dict[str, Any] | None = None
    """The message with the buttons under this user's last album."""
    album: list[dict[str, Any]] = field(default_factory=list)
    """The photo messages of this user's last album."""
    arriving: list[dict[str, Any]] = field(default_factory=list)
    """The album of the search in progress (its buttons come after it)."""


@dataclass(frozen=True)
class Minute:
    sent: int
    answered: int
    errors: int
    p50_s: float
    p95_s: float
    rss_mb: float


@dataclass(frozen=True)
class Totals:
    """The whole soak's messages and what became of them."""

    sent: int
    answered: int
    errors: int
    unanswered: int
    bot_log_errors: int
    """ERROR lines in the bot's log."""
    fake_server_errors: int
    bot_alive_at_end: bool
    kinds: dict[str, int]
    """Messages sent by kind."""


@dataclass(frozen=True)
class Soak:
    """What `measure` found: each minute, the totals, and the verdict (all answered, RSS
    flat: the last minute within 5% of the second)."""

    minutes: list[Minute]
    totals: Totals

    @property
    def rss_growth(self) -> float:
        second, last = self.minutes[1].rss_mb, self.minutes[-1].rss_mb
        return (last - second) / second

    @property
    def all_answered(self) -> bool:
        return self.totals.answered == self.totals.sent

    @property
    def rss_flat(self) -> bool:
        return abs(self.rss_growth) <= 0.05

    def to_json(self) -> dict:
        totals = self.totals
        return {
            "soak_minutes": len(self.minutes),
            "soak_users": USERS,
            "soak_rate_per_s": TOTAL_RATE,
            "soak_sent": totals.sent,
            "soak_answered": totals.answered,
            "soak_errors": totals.errors,
            "soak_unanswered": totals.unanswered,
            "soak_bot_log_errors": totals.bot_log_errors,
            "soak_rss_growth": round(self.rss_growth, 4),
            "soak_all_answered": self.all_answered,
            "soak_rss_flat": self.rss_flat,
            "soak_details": {**asdict(totals), "minutes": [asdict(m) for m in self.minutes]},
        }

    def to_markdown(self) -> str:
        rows, totals = self.minutes, self.totals
        minutes = table(
            f"Soak: {USERS} users, {TOTAL_RATE} messages/s in all for {len(rows)} minutes (text, "
            f"photos, buttons, /ask; {RATE_LIMIT_PER_MINUTE}/min per user allowed), ViT-B/32, "
            "tiny BLIP-2, fake Telegram on 127.0.0.1",
            ["minute", "sent", "answered", "errors", "p50 s", "p95 s", "bot RSS MB"],
            [
                [n + 1, m.sent, m.answered, m.errors, m.p50_s, m.p95_s, m.rss_mb]
                for n, m in enumerate(rows)
            ],
        )
        second, last = rows[1].rss_mb, rows[-1].rss_mb
        verdict = (
            f"\n{totals.answered}/{totals.sent} answered, {totals.errors} errors, "
            f"{totals.unanswered} unanswered, {totals.bot_log_errors} ERROR lines in the "
            f"bot's log; messages by kind: {totals.kinds}.\n"
            f"Verdict: all answered: {'yes' if self.all_answered else 'NO'}; RSS flat (minute "
            f"{len(rows)} within 5% of minute 2): {'yes' if self.rss_flat else 'NO'} "
            f"({second:.0f} → {last:.0f} MB, {self.rss_growth:+.1%})."
        )
        return document(minutes, verdict)


class Load:
    """Sends each user's messages on schedule and follows the fake server's calls to tell
    when (and how) each was answered."""

    def __init__(self, tg: FakeTelegram, started: float, interval_s: float) -> None:
        self.tg = tg
        self.interval_s = interval_s
        self.users = {
            uid: User(uid, random.Random(uid), started + n * interval_s / USERS)
            for n, uid in enumerate(range(7000, 7000 + USERS))
        }
        rng = random.Random(1)
        self.photos = [coco_like_jpeg(rng) for _ in range(USER_PHOTOS)]
        self.actions: list[Action] = []
        self.by_query: dict[str, Action] = {}
        self.cursor = tg.mark()

    def send_due(self, now: float) -> None:
        for user in self.users.values():
            if user.pending is None and now >= user.next_at:
                user.pending = self._send(user, now)
                self.actions.append(user.pending)
                user.next_at += self.interval_s

    def follow(self) -> None:
        calls = self.tg.calls(since=self.cursor)
        self.cursor += len(calls)
        for call in calls:
            if call.ok:
                self._route(call)

    @property
    def waiting(self) -> int:
        return sum(user.pending is not None for user in self.users.values())

    def _send(self, user: User, now: float) -> Action:
        kind = self._choose(user)
        action = Action(user.id, kind, now)
        if kind == "text":
            words = f"{user.rng.choice(WORDS)} {user.rng.randrange(1000)}"
            action.message_id = self.tg.inject_text(words, user_id=user.id)["message_id"]
        elif kind == "photo":
            photo = user.rng.choice(self.photos)
            action.message_id = self.tg.inject_photo(photo, user_id=user.id)["message_id"]
        elif kind == "ask":
            question = user.rng.choice(QUESTIONS)
            target = user.rng.choice(user.album)
            sent = self.tg.inject_text(f"/ask {question}".strip(), user_id=user.id, reply_to=target)
            action.message_id = sent["message_id"]
        else:
            assert user.buttons is not None
            data = self._button(user, kind)
            action.files_expected = len(user.album) if kind == "full" else 0
            action.query_id = self.tg.inject_callback_query(data, user.buttons, user_id=user.id)[
                "id"
            ]
            self.by_query[action.query_id] = action
        return action

    @staticmethod
    def _choose(user: User) -> str:
        if user.buttons is None:
            return user.rng.choice(["text", "text", "photo"])
        kinds = ["text"] * 7 + ["photo"] * 4 + ["similar"] * 2 + ["more", "full"] * 2 + ["ask"] * 3
        kind = user.rng.choice(kinds)
        if kind == "more" and not _buttons_of(user.buttons, "m:"):
            return "similar"
        return kind

    @staticmethod
    def _button(user: User, kind: str) -> str:
        assert user.buttons is not None
        prefix = {"more": "m:", "similar": "s:", "full": "f:"}[kind]
        return user.rng.choice(_buttons_of(user.buttons, prefix))

    def _route(self, call: Call) -> None:
        if call.method == "answerCallbackQuery":
            action = self.by_query.pop(str(call.params.get("callback_query_id")), None)
            if action is not None and call.params.get("text"):  # the press was refused
                self._finish(action, call, ok=False)
            return
        user = self.users.get(call.params.get("chat_id"))  # type: ignore[arg-type]
        action = user.pending if user else None
        if user is None or action is None:
            return
        if call.method in ("sendMediaGroup", "sendPhoto"):
            user.arriving = call.result if isinstance(call.result, list) else [call.result]
        elif call.method == "sendDocument" and action.kind == "full":
            action.files += 1
            if action.files == action.files_expected:
                self._finish(action, call, ok=True)
        elif call.method == "sendMessage":
            if action.kind in SEARCHES and call.result.get("reply_markup"):
                user.buttons, user.album = call.result, user.arriving
                self._finish(action, call, ok=True)
            elif action.kind == "ask":
                quoted = (call.params.get("reply_parameters") or {}).get("message_id")
                self._finish(action, call, ok=quoted == action.message_id)
            else:
                self._finish(action, call, ok=False)

    def _finish(self, action: Action, call: Call, *, ok: bool) -> None:
        action.done_at, action.ok = call.received, ok
        user = self.users[action.user]
        if user.pending is action:
            user.pending = None


def _buttons_of(message: dict[str, Any], prefix: str) -> list[str]:
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return [
        b["callback_data"] for row in rows for b in row if b["callback_data"].startswith(prefix)
    ]


def soak(settings, minutes: int, workdir: Path) -> Soak:
    log_path = workdir / "bot-soak.log"
    interval_s = USERS / TOTAL_RATE
    rss: list[float] = []
    with FakeTelegram() as tg:
        proc = start_bot(subprocess_env(settings, **tg.env()), workdir, log_path)
        try:
            started = time.monotonic()
            load = Load(tg, started, interval_s)
            end = started + minutes * 60
            while True:
                now = time.monotonic()
                if now >= started + 60 * (len(rss) + 1) and len(rss) < minutes:
                    rss.append(rss_mb(proc.pid))
                if now < end:
                    load.send_due(now)
                elif not load.waiting or now > end + DRAIN_S:
                    break
                load.follow()
                time.sleep(TICK_S)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(60)
        fake_errors = len(tg.errors)
    bot_log = log_path.read_text(errors="replace")
    rows = [
        _minute([a for a in load.actions if int((a.sent_at - started) // 60) == n], rss[n])
        for n in range(minutes)
    ]
    totals = Totals(
        sent=len(load.actions),
        answered=sum(a.ok for a in load.actions),
        errors=sum(a.done_at is not None and not a.ok for a in load.actions),
        unanswered=sum(a.done_at is None for a in load.actions),
        bot_log_errors=bot_log.count(" ERROR "),
        fake_server_errors=fake_errors,
        bot_alive_at_end=alive,
        kinds={
            k: sum(a.kind == k for a in load.actions) for k in sorted(SEARCHES | {"full", "ask"})
        },
    )
    return Soak(rows, totals)


def _minute(actions: list[Action], rss: float) -> Minute:
    times = [a.done_at - a.sent_at for a in actions if a.ok and a.done_at is not None]
    return Minute(
        sent=len(actions),
        answered=sum(a.ok for a in actions),
        errors=sum(a.done_at is not None and not a.ok for a in actions),
        p50_s=round(percentile(times, 50), 2),
        p95_s=round(percentile(times, 95), 2),
        rss_mb=round(rss, 1),
    )


def measure(quick: bool, workdir: Path) -> Soak:
    """Index the photos, then the soak against the bot."""
    from core.indexing import BuildOptions
    from core.indexing import run as index
    from core.sources.folders import FolderReader

    workdir.mkdir(parents=True, exist_ok=True)
    photos = make_photos(workdir.parent / "photos", PHOTOS)
    settings = bench_settings(
        workdir,
        vit_b32_dir().path,
        collection="soak",
        telegram_bot_token="123456:TEST",
        rate_limit_per_minute=RATE_LIMIT_PER_MINUTE,
        duplicate_cosine=1.0,  # random weights make every picture a near-duplicate
        vqa_model=str(ROOT / "tests" / "fixtures" / "tiny_blip2"),
        vqa_preload=True,
        vqa_max_new_tokens=10,
    )
    index(settings, FolderReader(photos[0].parent), BuildOptions(progress=False))
    return soak(settings, QUICK_MINUTES if quick else MINUTES, workdir)
