"""Peak memory of index_builder.py over 1,000 and 5,000 photos: it must not grow with the
dataset (pictures stream through a bounded window; only metadata is held)."""

from __future__ import annotations

from pathlib import Path

from bench.common import make_photos, table, vit_b32_dir
from bench.index_throughput import pipeline


def run(quick: bool, workdir: Path) -> dict:
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
    }
