"""How numbers read in build output: counts with their noun ("1 picture", "40,504 pictures"),
sizes in decimal units ("6.6 GB", "241 MB", "1.7 kB") and durations ("under a minute",
"about 23 min", "about 1 h 10 min") and times taken ("4 min 3 s").

Who uses it: index_builder.py, core.indexing and core.sources (downloads, readers), so that
every line of a build says numbers the same way.
"""

from __future__ import annotations

SIZE_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
"""Decimal units, as download sizes are quoted (and as the progress bars show them)."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`count` with thousands separators and its noun: "1 picture", "2 pictures",
    "40,504 pictures"; `nouns` for an irregular plural ("1 entry", "3 entries")."""
    word = noun if count == 1 else (nouns or noun + "s")
    return f"{count:,} {word}"


def format_size(size: float) -> str:
    """1234567890 → "1.2 GB" (decimal units: kB, MB, GB; below a kilobyte, bytes)."""
    for unit, scale in SIZE_UNITS:
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return plural(int(size), "byte")


def format_duration(seconds: float) -> str:
    """About how long `seconds` is, for an estimate: "under a minute", "about 23 min",
    "about 1 h 5 min" (never "0 min": an estimate is rounded, not truncated)."""
    minutes = round(seconds / 60)
    if seconds < 60 or minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h" + (f" {rest} min" if rest else "")


def format_seconds(seconds: float) -> str:
    """How long something took: "0.4 s", "59.0 s", "4 min 3 s", "1 h 2 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
