"""Hardware-aware defaults: `DTYPE=auto` and `index_builder.py --batch-size auto` are chosen
by a short measurement of the image tower on first use, not by a rule, and cached.

Who uses it: `DualEncoder` (dtype) and `index_builder.py` (batch size). Why measure: the
same rule ("bf16 where the CPU has it") is right on an Intel Xeon with AMX (bf16 152
images/s at batch 32, fp32 30) and nearly pointless on an AMD EPYC with AVX512-BF16 (33 vs
30), and the best batch differs (AMX: batch 32 152, batch 64 only 109).

The measurement: a probe batch of random pixels through the image tower, one warm-up and
one timed batch per candidate dtype (float32, and bfloat16 on a CPU that supports it at
all, or float16 on CUDA); a candidate whose vectors differ from float32's (mean cosine <
0.99) is rejected. Then, if asked, batches 16, 32, 64, 128 in the chosen dtype, within a
time budget. The bot only needs the dtype (its queries are single): it reuses this image
measurement rather than timing text queries. The result is cached in
`<CHROMA_PATH>/hardware-tuning.json`, keyed by CPU model, model name, torch version and
device, so later runs load straight into the chosen dtype.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CACHE_NAME = "hardware-tuning.json"
BATCH_CANDIDATES = (16, 32, 64, 128)
PROBE_BATCH = 16
MIN_COSINE = 0.99
BATCH_BUDGET_S = 6.0
"""The batch sweep stops starting new sizes after this long (an fp32-only CPU is slow)."""


@dataclass(frozen=True)
class TuningKey:
    cpu: str
    model: str
    torch: str
    device: str

    def text(self) -> str:
        return f"{self.cpu} | {self.model} | torch {self.torch} | {self.device}"


@dataclass
class Tuning:
    """What was chosen, and the measurements it was chosen by."""

    dtype: str
    dtype_rates: dict[str, float]
    """images/s per candidate dtype at the probe batch."""
    rejected: dict[str, float] = field(default_factory=dict)
    """candidates rejected for fidelity: their mean cosine with float32."""
    batch_size: int | None = None
    batch_rates: dict[str, float] = field(default_factory=dict)
    """images/s per batch size in the chosen dtype."""
    cached: bool = False
    """True when read from the cache rather than measured in this process."""

    def dtype_line(self, cpu: str) -> str:
        """ "bfloat16 (152 vs 30 images/s measured on <cpu>, cached)"."""
        rates = " vs ".join(
            f"{self.dtype_rates[d]:.0f}"
            for d in sorted(self.dtype_rates, key=lambda d: d != self.dtype)
        )
        how = "cached" if self.cached else "just measured"
        return f"{self.dtype} ({rates} images/s measured on {cpu}, {how})"

    def batch_line(self) -> str:
        rates = ", ".join(f"{b}: {r:.0f}" for b, r in self.batch_rates.items())
        how = "cached" if self.cached else "just measured"
        return f"{self.batch_size} (images/s by batch {rates}; {how})"

    def summary(self) -> str:
        """For /stats: "bfloat16, batch 32 (measured)"."""
        batch = f", batch {self.batch_size}" if self.batch_size else ""
        return f"{self.dtype}{batch} (measured)"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def key_for(model: str, device: torch.device) -> TuningKey:
    where = str(device) if device.type == "cpu" else f"{device} {_accelerator(device)}"
    return TuningKey(cpu_name(), model, torch.__version__, where)


class TuningCache:
    """A small JSON file of tunings keyed by `TuningKey`; a broken file is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: TuningKey) -> Tuning | None:
        entry = self._read().get(key.text())
        if not isinstance(entry, dict):
            return None
        try:
            return Tuning(**{**entry, "cached": True})
        except TypeError:
            return None

    def put(self, key: TuningKey, tuning: Tuning) -> None:
        entries = self._read()
        entries[key.text()] = {k: v for k, v in asdict(tuning).items() if k != "cached"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=2) + "\n")
            tmp.replace(self.path)
        except OSError as err:
            log.warning("could not cache the hardware tuning in %s: %s", self.path, err)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def dtype_candidates(device: torch.device) -> list[torch.dtype]:
    """float32 first (the reference), then what may be faster on this device."""
    if device.type == "cuda":
        return [torch.float32, torch.float16]
    if device.type == "cpu" and _cpu_supports_bf16():
        return [torch.float32, torch.bfloat16]
    return [torch.float32]


def choose_dtype(
    rates: dict[str, float], cosines: dict[str, float], min_cosine: float = MIN_COSINE
) -> tuple[str, dict[str, float]]:
    """The fastest dtype whose vectors agree with float32's; and those rejected."""
    rejected = {d: c for d, c in cosines.items() if d != "float32" and c < min_cosine}
    allowed = {d: r for d, r in rates.items() if d not in rejected}
    return max(allowed, key=lambda d: allowed[d]), rejected


def choose_batch(rates: dict[int, float]) -> int:
    """The batch size with the most images/s (the smaller on a tie)."""
    return max(sorted(rates), key=lambda b: rates[b])


def images_per_s(
    run: Callable[[], object], batch: int, clock=time.perf_counter, warm_up: bool = True
) -> float:
    """One warm-up call (if asked), then one timed call of `run` (which embeds `batch`
    images)."""
    if warm_up:
        run()
    started = clock()
    run()
    return batch / max(clock() - started, 1e-9)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of matching rows (the vectors need not be normalised)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return float((a * b).sum(axis=1).mean())


def measure_dtypes(
    model: torch.nn.Module,
    embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    candidates: Sequence[torch.dtype],
) -> tuple[dict[str, float], dict[str, float]]:
    """images/s and mean cosine with float32 per candidate. `model` starts in float32 and is
    converted in place along the candidates (it ends in the last one)."""
    rates: dict[str, float] = {}
    cosines: dict[str, float] = {}
    reference: np.ndarray | None = None
    for dtype in candidates:
        model.to(dtype)
        batch = pixels.to(dtype)
        with torch.inference_mode():
            vectors = embed(model, batch).float().cpu().numpy()
            rates[_name(dtype)] = images_per_s(lambda b=batch: embed(model, b), len(batch))
        if reference is None:
            reference = vectors
        cosines[_name(dtype)] = mean_cosine(vectors, reference)
    return rates, cosines


def measure_batches(
    embed: Callable[[torch.Tensor], object],
    make_pixels: Callable[[int], torch.Tensor],
    sizes: Sequence[int] = BATCH_CANDIDATES,
    budget_s: float = BATCH_BUDGET_S,
    clock=time.perf_counter,
) -> dict[int, float]:
    """images/s per batch size; sizes are not started once `budget_s` is spent."""
    rates: dict[int, float] = {}
    started = clock()
    for size in sizes:
        if rates and clock() - started > budget_s:
            log.info("batch sweep stopped at %d after %.0f s", size, clock() - started)
            break
        pixels = make_pixels(size)
        with torch.inference_mode():
            # the model is warm after the first size: no more warm-up passes
            rates[size] = images_per_s(lambda p=pixels: embed(p), size, clock, not rates)
    return rates


def probe_pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Normalised-looking random pixels (about N(0, 1)), the same on every run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _accelerator(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
