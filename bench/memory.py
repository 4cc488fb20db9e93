"""Peak memory of index_builder.py over 1,000 and 5,000 photos: it must not grow with the
dataset (pictures stream through a bounded window; only metadata is held). And the bot's
peak memory with CLIP ViT-B/32 loaded (BLIP-2 off) per dtype, side by side, with where it
goes (the imports alone, then the model).

`measure` returns a `Memory`, which renders its JSON and its tables."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    bench_settings,
    make_photos,
    peak_rss_mb,
    rss_mb,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.index_throughput import Builder, PipelineRun
from bench.report import document, table

IMPORTS = [
    ("python", ""),
    ("+ torch", "import torch"),
    ("+ transformers (AutoModel)", "from transformers import AutoModel"),
    ("+ chromadb", "import chromadb"),
    ("+ telegram", "import telegram"),
    ("+ the bot's modules", "import bot.app"),
]


@dataclass(frozen=True)
class BotRss:
    """One bot process's memory (MB), and what DTYPE=auto chose in it."""

    started_rss_mb: float
    peak_rss_mb: float
    rss_after_query_mb: float
    tuned: str | None


@dataclass(frozen=True)
class Memory:
    """What `measure` found: the bot per DTYPE, its imports, the builder per dataset size."""

    bot: dict[str, BotRss]
    imports: list[tuple[str, float]]
    """(step, RSS MB after it) of the bot's imports, in order."""
    builder: dict[int, PipelineRun]
    """index_builder.py runs by number of photos: the smaller, then the larger."""

    def to_json(self) -> dict:
        (small, small_run), (large, large_run) = self.builder.items()
        return {
            "builder_photos": [small, large],
            "builder_rss_mb_1k": small_run.peak_rss_mb,
            "builder_rss_mb_5k": large_run.peak_rss_mb,
            "builder_runs": {str(n): asdict(r) for n, r in self.builder.items()},
            "bot_memory": {label: asdict(r) for label, r in self.bot.items()},
            "bot_imports_rss_mb": dict(self.imports),
        }

    def to_markdown(self) -> str:
        bot = table(
            "Bot peak memory (RSS) with CLIP ViT-B/32 loaded (random weights, BLIP-2 off)",
            ["DTYPE", "after start MB", "peak MB", "after a query MB", "auto chose"],
            [
                [k, r.started_rss_mb, r.peak_rss_mb, r.rss_after_query_mb, r.tuned or ""]
                for k, r in self.bot.items()
            ],
        )
        imports = table(
            "Where the bot's memory goes: RSS after each import",
            ["step", "RSS MB"],
            [list(row) for row in self.imports],
        )
        builder = table(
            "index_builder.py peak memory (RSS) by dataset size",
            ["photos", "peak RSS MB", "images/s", "wall s"],
            [[f"{n:,}", r.peak_rss_mb, r.images_per_s, r.wall_s] for n, r in self.builder.items()],
        )
        return document(bot, imports, builder)


def measure(quick: bool, workdir: Path) -> Memory:
    """The bot per DTYPE first, then index_builder.py over a smaller and a larger set."""
    bot, imports = bot_memory(workdir)
    small, large = (200, 1000) if quick else (1000, 5000)
    clip = vit_b32_dir().path
    photos = make_photos(workdir.parent / "photos", large)
    builder = {}
    for count in (small, large):
        folder = workdir / f"memory-{count}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in photos[:count]:
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path)
        builder[count] = Builder(folder, clip, workdir).run(f"memory_{count}")
    return Memory(bot, imports, builder)


def imports_rss() -> list[tuple[str, float]]:
    """RSS after each import, in one fresh interpreter (what the bot holds before a model)."""
    lines = ["import pathlib", "def rss():"]
    lines.append("    for l in pathlib.Path('/proc/self/status').read_text().splitlines():")
    lines.append("        if l.startswith('VmRSS'): return int(l.split()[1]) / 1024")
    for label, statement in IMPORTS:
        lines += [statement, f"print({label!r}, rss(), flush=True)"]
    env = subprocess_env(bench_settings(Path("."), vit_b32_dir().path))
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)], env=env, capture_output=True, text=True
    )
    rows = []
    for line in out.stdout.splitlines():
        label, _, value = line.rpartition(" ")
        rows.append((label.strip("'"), round(float(value))))
    return rows


def bot_rss(settings, workdir: Path, label: str) -> BotRss:
    """Start `python -m bot`, answer one text query (CLIP loaded), read its peak RSS."""
    from tests.fake_telegram import FakeTelegram

    log_path = workdir / f"bot-memory-{label}.log"
    with FakeTelegram() as tg:
        proc = start_bot(subprocess_env(settings, **tg.env()), workdir, log_path)
        try:
            started_mb = peak_rss_mb(proc.pid)
            tg.inject_text("a dog on a beach", user_id=5000)
            tg.wait_sent(5000, 1, timeout=300)
            now_mb = rss_mb(proc.pid)
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    tuned = [x.split("DTYPE auto → ", 1)[1] for x in log_path.read_text().splitlines() if "→" in x]
    return BotRss(
        started_rss_mb=round(started_mb),
        peak_rss_mb=round(peak),
        rss_after_query_mb=round(now_mb),
        tuned=tuned[0] if tuned else None,
    )


def bot_memory(workdir: Path) -> tuple[dict[str, BotRss], list[tuple[str, float]]]:
    """The bot's memory per DTYPE (a small index), and where it goes (its imports)."""
    from core.indexing import BuildOptions
    from core.indexing import run as index
    from core.sources.folders import FolderReader

    clip = vit_b32_dir().path
    photos = make_photos(workdir.parent / "photos", 40)
    folder = workdir / "bot-memory"
    folder.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(
        folder,
        clip,
        collection="bot_memory",
        telegram_bot_token="123456:TEST",
        rate_limit_per_minute=0,
        vqa_enabled=False,
        dtype="float32",
    )
    index(settings, FolderReader(photos[0].parent), BuildOptions(progress=False, batch_size=16))
    runs = {}
    for label, dtype in [
        ("float32", "float32"),
        ("bfloat16", "bfloat16"),
        ("auto, first start (measures)", "auto"),
        ("auto, cached", "auto"),
    ]:
        runs[label] = bot_rss(settings.model_copy(update={"dtype": dtype}), folder, label[:8])
    return runs, imports_rss()
