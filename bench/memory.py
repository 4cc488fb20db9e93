"""Peak memory of index_builder.py over 1,000 and 5,000 photos: it must not grow with the
dataset (pictures stream through a bounded window; only metadata is held). And the bot's
peak memory with CLIP ViT-B/32 loaded (BLIP-2 off) per dtype, side by side, with where it
goes (the imports alone, then the model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import (
    bench_settings,
    make_photos,
    peak_rss_mb,
    rss_mb,
    start_bot,
    subprocess_env,
    table,
    vit_b32_dir,
)
from bench.index_throughput import pipeline

IMPORTS = [
    ("python", ""),
    ("+ torch", "import torch"),
    ("+ transformers (AutoModel)", "from transformers import AutoModel"),
    ("+ chromadb", "import chromadb"),
    ("+ telegram", "import telegram"),
    ("+ the bot's modules", "import bot.app"),
]


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


def bot_rss(settings, workdir: Path, label: str) -> dict:
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
    return {
        "started_rss_mb": round(started_mb),
        "peak_rss_mb": round(peak),
        "rss_after_query_mb": round(now_mb),
        "tuned": tuned[0] if tuned else None,
    }


def bot_memory(quick: bool, workdir: Path) -> dict:
    from core.indexing.build import run as index
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
    index(settings, FolderReader(photos[0].parent), progress=False, batch_size=16)
    runs = {}
    for label, dtype in [
        ("float32", "float32"),
        ("bfloat16", "bfloat16"),
        ("auto, first start (measures)", "auto"),
        ("auto, cached", "auto"),
    ]:
        runs[label] = bot_rss(settings.model_copy(update={"dtype": dtype}), folder, label[:8])
    imports = imports_rss()
    table(
        "Bot peak memory (RSS) with CLIP ViT-B/32 loaded (random weights, BLIP-2 off)",
        ["DTYPE", "after start MB", "peak MB", "after a query MB", "auto chose"],
        [
            [k, r["started_rss_mb"], r["peak_rss_mb"], r["rss_after_query_mb"], r["tuned"] or ""]
            for k, r in runs.items()
        ],
    )
    table("Where the bot's memory goes: RSS after each import", ["step", "RSS MB"], imports)
    return {"bot_memory": runs, "bot_imports_rss_mb": dict(imports)}


def run(quick: bool, workdir: Path) -> dict:
    bot = bot_memory(quick, workdir)
    small, large = (200, 1000) if quick else (1000, 5000)
    clip = vit_b32_dir().path
    photos = make_photos(workdir.parent / "photos", large)
    results = {}
    for count in (small, large):
        folder = workdir / f"memory-{count}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in photos[:count]:
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path)
        results[count] = pipeline(folder, clip, workdir, f"memory_{count}")
    table(
        "index_builder.py peak memory (RSS) by dataset size",
        ["photos", "peak RSS MB", "images/s", "wall s"],
        [[f"{n:,}", r["peak_rss_mb"], r["images_per_s"], r["wall_s"]] for n, r in results.items()],
    )
    return {
        "builder_photos": [small, large],
        "builder_rss_mb_1k": results[small]["peak_rss_mb"],
        "builder_rss_mb_5k": results[large]["peak_rss_mb"],
        "builder_runs": {str(n): r for n, r in results.items()},
        **bot,
    }
