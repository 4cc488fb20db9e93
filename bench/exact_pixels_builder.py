"""`index_builder.py` with the batched torch preprocessing turned off: every picture is
resized by Pillow, exactly as the processor does, in the decode threads (the design before
`core.models.pixels.BatchPixels`). The ablation of `bench/index_throughput.py`; takes
index_builder.py's arguments."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.models import pixels  # noqa: E402

pixels.BatchPixels.for_pixels = classmethod(lambda cls, exact, dtype: None)  # type: ignore[method-assign]
sys.argv[0] = str(ROOT / "index_builder.py")
runpy.run_path(sys.argv[0], run_name="__main__")
