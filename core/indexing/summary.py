"""What a build did: `BuildSummary`, counted in place by every step as the store confirms
it, so a run stopped at any moment (Ctrl-C) reports exactly what it changed.

Who uses it: every step of core.indexing fills it; index_builder.py prints it; the tests and
benchmarks read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.indexing.recall import Tuning


@dataclass
class BuildSummary:
    """What a run did."""

    source: str
    collection: str
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    beyond_limit: int = 0
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of every picture that could not be indexed."""
    captions_indexed: int = 0
    captions_removed: int = 0
    dropped: list[str] = field(default_factory=list)
    """Collections dropped by `rebuild`, as they were dropped."""
    total: int = 0
    """Vectors in the image collection after the run."""
    elapsed_s: float = 0.0
    embed_s: float = 0.0
    """Time spent in the decode → encode → store loop."""
    report: Path | None = None
    stage: str = ""
    """The step the run was in last ("removing entries whose files are gone", ...)."""
    interrupted: bool = False
    """Stopped by Ctrl-C during `stage`; the counts say what was done until then."""
    recall: Tuning | None = None
    """The text recall measured at the end (core.indexing.recall); None when the run did not
    measure it (nothing changed and a search depth was recorded before)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent embedding images, by step: decode_cpu and preprocess_cpu (CPU time of
    the decode threads), batch_pixels (finishing the batch's pixels: on a CPU torch's
    resize) and model (the model's thread), store (the writer thread), waiting_for_decode
    and waiting_for_store (the model's thread idle)."""

    def add_times(self, **seconds: float) -> None:
        """Add `seconds` to `timings`, by step."""
        for name, value in seconds.items():
            self.timings[name] = self.timings.get(name, 0.0) + value

    def breakdown(self) -> str:
        """Milliseconds per indexed image by step, in one line."""
        n = max(1, self.indexed)
        return " · ".join(f"{name} {s / n * 1000:.2f} ms" for name, s in self.timings.items())

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.embed_s if self.embed_s > 0 else 0.0

    @property
    def changed(self) -> bool:
        """True when the run changed the store (dropped, removed or stored anything)."""
        return bool(
            self.dropped
            or self.indexed
            or self.removed
            or self.captions_indexed
            or self.captions_removed
        )

    @property
    def up_to_date(self) -> bool:
        """True when the run found nothing to add, change or remove."""
        return not self.changed
