"""Hardware-aware defaults: `DTYPE=auto` and `index_builder.py --batch-size auto` are chosen
by a short measurement of the image tower on first use, not by a rule, and cached.

Who uses it: `DualEncoder` loads its weights through `Tuner.load` (the dtype, and the batch
size for `index_builder.py`). Why measure: the same rule ("bf16 where the CPU has it") pays
off greatly on a CPU with AMX and hardly at all on one with AVX512-BF16 alone, and the best
batch differs from CPU to CPU (docs/benchmarks.md has the measurements).

The measurement: a probe batch of random pixels through the image tower, one warm-up and
one timed batch per candidate dtype (float32, and bfloat16 on a CPU that supports it at
all, or float16 on CUDA); a candidate whose vectors differ from float32's (mean cosine <
`MIN_COSINE`) is rejected. Then, if asked, `BATCH_CANDIDATES` in the chosen dtype, within a
time budget. The bot only needs the dtype (its queries are single): it reuses this image
measurement rather than timing text queries. The result is cached in
`<CHROMA_PATH>/hardware-tuning.json`, keyed by CPU model, model name, torch version and
device, so later runs load straight into the chosen dtype.

The same file keeps what ENCODER_RUNTIME=auto chose for the query towers (`RuntimeTuning`,
measured by `core.models.onnx_runtime`), under its own key (`TuningCache.get_entry`).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch

from core.models.runtime import DTYPES, cpu_has_native_bf16

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
    runtime: RuntimeTuning | None = None
    """What embeds the queries (ENCODER_RUNTIME), when not plain torch; cached apart."""

    def dtype_line(self, cpu: str) -> str:
        """ "bfloat16 (<rate> vs <rate> images/s measured on <cpu>, cached)", the chosen
        dtype's rate first."""
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
        """For /stats: "bfloat16, batch 32 (measured)", and the query runtime when there is
        one: "bfloat16 (measured); queries: text onnx-int8, images torch (measured)"."""
        batch = f", batch {self.batch_size}" if self.batch_size else ""
        measured = self.dtype_rates or self.batch_size  # else only the runtime was chosen
        tuned = f"{self.dtype}{batch} (measured)" if measured else self.dtype
        return f"{tuned}; queries: {self.runtime.summary()}" if self.runtime else tuned


@dataclass
class RuntimeTuning:
    """What embeds the queries (ENCODER_RUNTIME: "torch", "onnx" or "onnx-int8" per tower),
    and the measurements it was chosen by (`core.models.onnx_runtime`)."""

    text: str
    image: str
    text_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds of one probe query per candidate runtime (median)."""
    image_ms: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, float] = field(default_factory=dict)
    """The lowest cosine with float32 torch on the probes, per "<tower> <runtime>"."""
    rejected: list[str] = field(default_factory=list)
    """The "<tower> <runtime>" candidates whose cosine was too low."""
    reason: str = "measured"
    """"measured", "cached", "set" (ENCODER_RUNTIME given) or why it fell back to torch."""

    def line(self) -> str:
        """For the log: "text → onnx-int8 (4.8 ms; torch 12.1, onnx 13.5), images → torch
        (44.3 ms; onnx 66.9, onnx-int8 27.6 rejected: cosine 0.9981), measured"."""
        text = f"text → {self.text}{self._timings('text', self.text_ms)}"
        image = f"images → {self.image}{self._timings('image', self.image_ms)}"
        return f"{text}, {image}; {self.reason}"

    def summary(self) -> str:
        """For /stats: "text onnx-int8, images torch (measured)"."""
        return f"text {self.text}, images {self.image} ({self.reason})"

    def _timings(self, tower: str, ms: dict[str, float]) -> str:
        """The chosen runtime's time, then the others': "(4.8 ms; torch 12.1, onnx 13.5)"."""
        chosen = self.text if tower == "text" else self.image
        if chosen not in ms:
            return ""
        others = []
        for name, value in ms.items():
            candidate = f"{tower} {name}"
            rejected = candidate in self.rejected and candidate in self.cosines
            why = f" rejected: cosine {self.cosines[candidate]:.4f}" if rejected else ""
            if name != chosen:
                others.append(f"{name} {value:.1f}{why}")
        return f" ({ms[chosen]:.1f} ms; {', '.join(others)})"


def with_runtime(
    tuned: Tuning | None, dtype: torch.dtype, runtime: RuntimeTuning | None
) -> Tuning | None:
    """`tuned` (DTYPE=auto's, or None when DTYPE was set) with the query runtime's choice;
    a new `Tuning` holding only the runtime when DTYPE was set."""
    if runtime is None:
        return tuned
    if tuned is None:
        tuned = Tuning(_name(dtype), {})
    tuned.runtime = runtime
    return tuned


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
        entry = self.get_entry(key.text())
        try:
            return Tuning(**{**entry, "cached": True}) if entry is not None else None
        except TypeError:
            return None

    def put(self, key: TuningKey, tuning: Tuning) -> None:
        skip = ("cached", "runtime")
        self.put_entry(key.text(), {k: v for k, v in asdict(tuning).items() if k not in skip})

    def get_entry(self, key: str) -> dict | None:
        """The entry cached under `key` (a JSON object), if any."""
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) else None

    def put_entry(self, key: str, entry: dict) -> None:
        """Cache `entry` under `key` (the file is rewritten atomically)."""
        entries = self._read()
        entries[key] = entry
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


M = TypeVar("M", bound=torch.nn.Module)
ImageTower = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""The model's image tower: (model, pixels) → image embeddings (what is timed)."""


@dataclass(frozen=True)
class Tuned(Generic[M]):
    """A model loaded in its dtype, and the tuning that chose it (None when DTYPE was set
    and no batch size was asked for)."""

    model: M
    dtype: torch.dtype
    tuning: Tuning | None


@dataclass(frozen=True)
class Tuner:
    """Loads one model in the dtype this machine runs it best in: DTYPE=auto read from the
    cache or measured (and cached), and with `batch` the best image batch size too."""

    key: TuningKey
    device: torch.device
    input_size: int
    """The side of the square pictures the image tower takes."""
    tower: ImageTower
    cache: TuningCache | None = None
    batch: bool = False
    """Also measure the best image batch size (`index_builder.py --batch-size auto`)."""

    def load(self, load: Callable[[torch.dtype], M], dtype: torch.dtype | None) -> Tuned[M]:
        """The model `load` gives (its weights in a dtype, on the device, ready for
        inference) in `dtype`, or with None (DTYPE=auto) in the cached or measured one.
        Measuring loads float32 and converts it along the candidates, so the model is loaded
        again unless it ended in the chosen one (converting back would lose precision)."""
        tuning = self._cached() if dtype is None else None
        model = None
        if dtype is None and tuning is None:
            model, tuning = self._measure_dtype(load)
        if tuning is not None:
            dtype = DTYPES[tuning.dtype]
        assert dtype is not None
        if model is None:
            model = load(dtype)
        if self.batch and (tuning is None or tuning.batch_size is None):
            tuning = self._measure_batch(model, dtype, tuning)
        if self.cache is not None and tuning is not None and tuning.dtype_rates:
            self.cache.put(self.key, tuning)  # only what DTYPE=auto chose
        return Tuned(model, dtype, tuning)

    def _cached(self) -> Tuning | None:
        tuning = self.cache.get(self.key) if self.cache is not None else None
        if tuning is not None:
            log.info("DTYPE auto → %s", tuning.dtype_line(cpu_name()))
            if self.batch and tuning.batch_size is not None:
                log.info("--batch-size auto → %s", tuning.batch_line())
        return tuning

    def _measure_dtype(self, load: Callable[[torch.dtype], M]) -> tuple[M | None, Tuning]:
        """Time the image tower per candidate dtype: the model if it ended in the chosen
        dtype (else None), and the tuning."""
        candidates = dtype_candidates(self.device)
        model = load(torch.float32)
        pixels = probe_pixels(PROBE_BATCH, self.input_size).to(self.device)
        rates, cosines = measure_dtypes(model, self.tower, pixels, candidates)
        chosen, rejected = choose_dtype(rates, cosines)
        for dtype, cosine in rejected.items():
            log.warning("DTYPE auto: %s rejected, cosine with float32 %.4f", dtype, cosine)
        tuning = Tuning(chosen, {d: round(r, 1) for d, r in rates.items()}, rejected)
        log.info("DTYPE auto → %s", tuning.dtype_line(cpu_name()))
        return (model if DTYPES[chosen] == candidates[-1] else None), tuning

    def _measure_batch(
        self, model: torch.nn.Module, dtype: torch.dtype, tuning: Tuning | None
    ) -> Tuning:
        """`tuning` (or, with DTYPE set, a new one) with the best image batch size."""
        rates = measure_batches(
            lambda pixels: self.tower(model, pixels),
            lambda n: probe_pixels(n, self.input_size).to(self.device, dtype),
        )
        if tuning is None:  # DTYPE set explicitly: only the batch is tuned
            tuning = Tuning(_name(dtype), {}, batch_size=None)
        tuning.batch_size = choose_batch(rates)
        tuning.batch_rates = {str(b): round(r, 1) for b, r in rates.items()}
        tuning.cached = False
        log.info("--batch-size auto → %s", tuning.batch_line())
        return tuning


def dtype_candidates(device: torch.device) -> list[torch.dtype]:
    """float32 first (the reference), then what may be faster on this device."""
    if device.type == "cuda":
        return [torch.float32, torch.float16]
    if device.type == "cpu" and cpu_has_native_bf16():
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


def _accelerator(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
