"""ENCODER_RUNTIME: what embeds the queries, torch or ONNX Runtime with float32 ("onnx") or
int8 ("onnx-int8") weights, chosen per machine as DTYPE=auto is.

Who uses it: `DualEncoder` when it loads (`query_towers`); its `embed_texts` and
`embed_images` (the bot's queries) go through the `QueryTowers` it gives, while
`embed_pixels` (the index builder's batches, with their tuned and compiled path) stays on
torch. Why: on a CPU ONNX Runtime with int8 weights runs one query through CLIP's towers
faster than torch (ViT-B/32 on the EPYC: a text 6.1 against 8.2 ms in bfloat16, a picture
13.9 against 24.7; docs/benchmarks.md); Immich and rclip serve CLIP so too.

`auto`, on the first load on a CPU: both towers are exported from float32 weights, with
their int8 variants, to `<CHROMA_PATH>/onnx/` (once per model and versions:
`core.models.onnx_files`). Each candidate (torch in the loaded dtype, onnx, onnx-int8)
embeds fixed probe texts and pictures: one whose lowest cosine with float32 torch is below
`MIN_COSINE` is rejected (and logged). One probe query per candidate is timed, interleaved,
and the fastest candidate left serves that tower. The choice is cached in
hardware-tuning.json (keyed by CPU, model, its weights, torch, onnxruntime and opset
versions, device and dtype); later loads only open the chosen towers' files, exporting them
again when they are missing or not to be trusted. `onnx` and `onnx-int8` serve both towers
so without measuring. Any failure (an export that fails, an unsupported op, a full disk) is
one log line and torch, never a crash; `onnx` or `onnx-int8` set without onnxruntime (or
int8 without onnx and onnx-ir) is a `ConfigError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import ConfigError
from core.models.hub import first_line
from core.models.onnx_export import OPSET, export_image, export_text, quantize
from core.models.onnx_files import OnnxCache, digest_of, weights_fingerprint
from core.models.onnx_towers import IMAGE, TEXT, OnnxTower, QueryTowers, torch_features
from core.models.tuning import RuntimeTuning, TuningCache, key_for, probe_pixels

log = logging.getLogger(__name__)

AUTO, TORCH, ONNX, ONNX_INT8 = "auto", "torch", "onnx", "onnx-int8"
MIN_COSINE = 0.999
"""A candidate's lowest cosine with float32 torch over the probes must reach this."""
PROBE_TEXTS = (
    "a dog",
    "a photo of a dog running on a sandy beach",
    "two cats sleeping on a sofa next to a window",
    "a red double decker bus in the rain",
    "a plate of food with broccoli and rice",
    "a child holding an umbrella on a city street at night",
    "people flying kites in a park on a sunny day, " * 8,  # past CLIP's context: truncated
)
PROBE_QUERY = PROBE_TEXTS[1]
"""The timed query (12 CLIP tokens)."""
PROBE_IMAGES = 4
TIMED_RUNS = {TEXT: 20, IMAGE: 5}
"""Timed probe queries per candidate, after one warm-up each."""
Inputs = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RuntimeRequest:
    """What choosing needs to know of the encoder."""

    setting: str
    """ENCODER_RUNTIME: auto, torch, onnx or onnx-int8."""
    model_name: str
    device: torch.device
    tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]]
    """The family's tokenizer call, as `embed_texts` makes it."""
    input_size: int
    cache: TuningCache | None
    """hardware-tuning.json; the exported files go in an `onnx` folder beside it (without
    it they are exported to a temporary folder, and nothing is cached)."""


@dataclass(frozen=True)
class Weights:
    """The model as loaded (the torch candidate), and float32 weights to export from."""

    model: torch.nn.Module
    dtype: torch.dtype
    float32: Callable[[], torch.nn.Module]
    """Loads the float32 weights (called at most once, only when `dtype` is not float32)."""


def query_towers(request: RuntimeRequest, weights: Weights) -> QueryTowers:
    """The towers that serve the queries, as `request.setting` says (see the module)."""
    setting = request.setting
    if setting == TORCH:
        return QueryTowers()
    missing = _missing(request.device, setting)
    if missing is not None:
        if setting != AUTO:
            raise ConfigError(f"ENCODER_RUNTIME={setting} {missing}: set ENCODER_RUNTIME=torch")
        log.info("ENCODER_RUNTIME auto → torch: %s", missing)
        return QueryTowers(tuning=RuntimeTuning(TORCH, TORCH, reason=f"torch: {missing}"))
    try:
        with _folder(request.cache) as root:
            return _Chooser(request, weights, root).towers()
    except Exception as err:  # an export that fails, an unsupported op, a full disk, ...
        log.warning(
            "ENCODER_RUNTIME %s → torch: ONNX Runtime failed (%s)", setting, first_line(err)
        )
        why = f"torch: ONNX failed ({type(err).__name__})"
        return QueryTowers(tuning=RuntimeTuning(TORCH, TORCH, reason=why))


def choose_runtime(
    ms: dict[str, float], cosines: dict[str, float], min_cosine: float
) -> tuple[str, list[str]]:
    """The fastest runtime whose vectors keep `min_cosine` with float32 (torch when none
    does), and the runtimes rejected."""
    rejected = [name for name, cosine in cosines.items() if cosine < min_cosine]
    allowed = {name: t for name, t in ms.items() if name not in rejected}
    return (min(allowed, key=allowed.__getitem__) if allowed else TORCH), rejected


class _Chooser:
    """One load's choice: cached or measured (auto), or as set."""

    def __init__(self, request: RuntimeRequest, weights: Weights, root: Path) -> None:
        import onnxruntime

        self.request = request
        self.weights = weights
        fingerprint = weights_fingerprint(request.model_name)
        versions = f"torch {torch.__version__} | onnxruntime {onnxruntime.__version__}"
        self.files = OnnxCache(
            root,
            request.model_name,
            digest_of(request.model_name, fingerprint, versions, _onnx_version(), str(OPSET)),
        )
        self.key = (
            f"{key_for(request.model_name, request.device).text()} | weights {fingerprint} | "
            f"{versions} | opset {OPSET} | {weights.dtype} | ENCODER_RUNTIME"
        )
        self._float32: torch.nn.Module | None = None

    def towers(self) -> QueryTowers:
        setting = self.request.setting
        tuning = RuntimeTuning(setting, setting, reason="set") if setting != AUTO else None
        if tuning is None:
            tuning = self._cached()
        if tuning is None:
            return self._measure()
        sessions = {
            tower: self._session(tower, runtime)
            for tower, runtime in ((TEXT, tuning.text), (IMAGE, tuning.image))
            if runtime != TORCH
        }
        log.info("ENCODER_RUNTIME %s: %s", setting, tuning.line())
        return QueryTowers(sessions.get(TEXT), sessions.get(IMAGE), tuning)

    def _cached(self) -> RuntimeTuning | None:
        cache = self.request.cache
        entry = cache.get_entry(self.key) if cache is not None else None
        try:
            tuning = RuntimeTuning(**{**entry, "reason": "cached"}) if entry else None
        except TypeError:
            return None
        known = (TORCH, ONNX, ONNX_INT8)
        return tuning if tuning and {tuning.text, tuning.image} <= set(known) else None

    def _measure(self) -> QueryTowers:
        """Export, check and time every candidate of both towers; keep the fastest that
        passes, and cache the choice."""
        candidates = (ONNX, ONNX_INT8) if _onnx_version() != "-" else (ONNX,)
        if ONNX_INT8 not in candidates:
            log.info("ENCODER_RUNTIME auto: no onnx-int8 (onnx or onnx-ir is not installed)")
        found: dict[str, _Measured] = {}
        kept: dict[str, OnnxTower | None] = {}
        for tower, probes, query in self._probes():  # one tower at a time: half the memory
            sessions = {r: self._session(tower, r) for r in candidates}
            found[tower] = self._measure_tower(tower, probes, query, sessions)
            kept[tower] = sessions.get(found[tower].chosen)
        self._float32 = None
        text, image = found[TEXT], found[IMAGE]
        tuning = RuntimeTuning(
            text.chosen,
            image.chosen,
            text.ms,
            image.ms,
            cosines={f"{t} {r}": c for t, m in found.items() for r, c in m.cosines.items()},
            rejected=[f"{t} {r}" for t, m in found.items() for r in m.rejected],
        )
        if self.request.cache is not None:
            entry = {k: v for k, v in vars(tuning).items() if k != "reason"}
            self.request.cache.put_entry(self.key, entry)
        log.info("ENCODER_RUNTIME auto: %s", tuning.line())
        return QueryTowers(kept[TEXT], kept[IMAGE], tuning)

    def _measure_tower(
        self, tower: str, probes: Inputs, query: Inputs, sessions: dict[str, OnnxTower]
    ) -> _Measured:
        """One tower's candidates: torch in the loaded dtype and `sessions`."""
        runs = {TORCH: self._torch_run(tower)} | {r: s.run for r, s in sessions.items()}
        reference = self._reference(tower, probes)
        cosines = {r: round(_min_cosine(run(probes), reference), 5) for r, run in runs.items()}
        ms = {r: round(t, 2) for r, t in _timed(runs, query, TIMED_RUNS[tower]).items()}
        chosen, rejected = choose_runtime(ms, cosines, MIN_COSINE)
        for runtime in rejected:
            log.warning(
                "ENCODER_RUNTIME auto: %s %s rejected, its cosine with float32 %.4f < %s",
                tower,
                runtime,
                cosines[runtime],
                MIN_COSINE,
            )
        return _Measured(chosen, ms, cosines, rejected)

    def _probes(self) -> list[tuple[str, Inputs, Inputs]]:
        """(tower, the fidelity probes, the timed query) for each tower."""
        size = self.request.input_size
        return [
            (TEXT, self.request.tokenize(PROBE_TEXTS), self.request.tokenize([PROBE_QUERY])),
            (
                IMAGE,
                {"pixel_values": probe_pixels(PROBE_IMAGES, size)},
                {"pixel_values": probe_pixels(1, size, seed=1)},
            ),
        ]

    def _torch_run(self, tower: str) -> Callable[[Inputs], torch.Tensor]:
        model, dtype = self.weights.model, self.weights.dtype

        def run(inputs: Inputs) -> torch.Tensor:
            cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            with torch.inference_mode():
                return torch_features(model, tower, cast).float()

        return run

    def _reference(self, tower: str, probes: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return torch_features(self._float32_model(), tower, probes)

    def _session(self, tower: str, runtime: str) -> OnnxTower:
        """The tower's session from the cached file, exported (again) when there is none or
        it does not load."""
        threads = torch.get_num_threads()
        with self.files.opened(tower, runtime) as model:
            if model is not None:
                try:
                    return OnnxTower(model, threads)
                except Exception as err:  # a truncated or corrupted file: onnxruntime's errors
                    log.warning(
                        "ONNX cache file %s is ignored (%s): exporting it again",
                        self.files.path(tower, runtime),
                        first_line(err),
                    )
        self._export(tower, runtime)
        with self.files.opened(tower, runtime) as model:
            if model is None:
                raise OSError(f"{self.files.path(tower, runtime)} cannot be read back")
            return OnnxTower(model, threads)

    def _export(self, tower: str, runtime: str) -> None:
        """Write the tower's file for `runtime` (int8: from the float32 file, exported first
        when there is none)."""
        started = time.perf_counter()
        if runtime == ONNX_INT8:
            with self.files.opened(tower, ONNX) as source:
                if source is not None:
                    self.files.write(tower, runtime, lambda path: quantize(source, path, tower))
            if source is None:
                self._export(tower, ONNX)
                self._export(tower, runtime)
                return
        elif tower == TEXT:
            tokens = self.request.tokenize(PROBE_TEXTS[:2])  # two lengths: padding is traced
            self.files.write(
                tower, runtime, lambda p: export_text(self._float32_model(), tokens, p)
            )
        else:
            pixels = probe_pixels(1, self.request.input_size)
            self.files.write(
                tower, runtime, lambda p: export_image(self._float32_model(), pixels, p)
            )
        log.info(
            "exported the %s tower (%s) to %s in %.1f s",
            tower,
            runtime,
            self.files.path(tower, runtime),
            time.perf_counter() - started,
        )

    def _float32_model(self) -> torch.nn.Module:
        if self.weights.dtype == torch.float32:
            return self.weights.model
        if self._float32 is None:
            self._float32 = self.weights.float32()
        return self._float32


@dataclass(frozen=True)
class _Measured:
    """One tower's measurement: the runtime chosen, each candidate's milliseconds and lowest
    cosine with float32, and those rejected."""

    chosen: str
    ms: dict[str, float]
    cosines: dict[str, float]
    rejected: list[str]


def _missing(device: torch.device, setting: str) -> str | None:
    """Why ONNX Runtime cannot serve here (None: it can)."""
    if device.type != "cpu":
        return f"serves the CPU only, and DEVICE is {device.type}"
    if importlib.util.find_spec("onnxruntime") is None:
        return "needs onnxruntime, which is not installed (pip install onnxruntime onnx-ir)"
    if setting == ONNX_INT8 and _onnx_version() == "-":
        return "needs onnx and onnx-ir to quantize, which are not installed (pip install onnx-ir)"
    return None


def _onnx_version() -> str:
    """The versions of onnx and onnx-ir, which quantize ("-" when either is missing: no int8
    then)."""
    try:
        import onnx
        import onnx_ir
    except ImportError:
        return "-"
    return f"onnx {onnx.__version__} onnx-ir {onnx_ir.__version__}"


@contextlib.contextmanager
def _folder(cache: TuningCache | None):
    """Where the exported files go: beside hardware-tuning.json, else a temporary folder."""
    if cache is not None:
        yield cache.path.parent
        return
    with tempfile.TemporaryDirectory(prefix="onnx-") as folder:
        yield Path(folder)


def _min_cosine(vectors: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = vectors.float().numpy(), reference.float().numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return float((a * b).sum(axis=1).min())


def _timed(runs: dict[str, Callable[[Inputs], object]], query: Inputs, repeats: int) -> dict:
    """Median milliseconds of `query` per runtime: one warm-up each, then `repeats` rounds
    with the runtimes in turn (drift hits all alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(query)
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run(query)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(s) * 1000 for name, s in seconds.items()}
