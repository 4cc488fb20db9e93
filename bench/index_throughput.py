"""Index throughput over COCO-like 640×480 JPEGs, ViT-B/32 architecture, side by side:

(a) naive: the original project's way, one image at a time through CLIPProcessor and fp32
    get_image_features, one Chroma add per image;
(b) ceiling: ready pixel tensors through the image tower, the builder's dtype, the best of
    a batch sweep (16, 32, 64, 128), eager and compiled, each the median of 3 passes;
(c) pipeline: `index_builder.py` end to end (decode → encode → store), as a process,
    compared with the best ceiling of its own kind (eager with eager, compiled with
    compiled; `--compile` from a cold compile cache, its wall time includes compiling);
plus where (c)'s time goes per image (the builder's own breakdown), the physical bound
that follows from it, and what each optimisation gives (ablations, same photos, same run);
(d) the same pipeline with a 3-layer ViT-B/32, a much faster model: on an AMD CPU it
    weighs what ViT-B/32 weighs on an Intel CPU with AMX, so the share of the work around
    the model can be measured on either kind; in rounds of ceiling and pipelines, each
    pipeline against its own round's ceiling, as this machine's speed drifts.

`measure` returns an `IndexThroughput`; its tables are rendered by `to_markdown`.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import (
    ROOT,
    bench_settings,
    fast_vit_dir,
    make_photos,
    run_measured,
    subprocess_env,
    vit_b32_dir,
)
from bench.report import document, table

# GPU runs (bench/gpu.sh) set these; the defaults are the CPU's.
DEVICE = os.environ.get("BENCH_DEVICE", "auto")
BATCH = os.environ.get("BENCH_BATCH", "32")
WORKERS = os.environ.get("BENCH_WORKERS", "2")
PHOTOS = int(os.environ.get("BENCH_PHOTOS", "500"))
PASSES = 3
"""Each ceiling point is the median of this many timed passes."""
FAST_ROUNDS = 3
"""(d) measures its ceiling and both pipelines this many times, in rounds."""
CORES = os.cpu_count() or 1
EXACT_PIXELS_BUILDER = "bench/exact_pixels_builder.py"
"""index_builder.py with Pillow's exact resize in the decode threads (the ablation)."""
CLIP_RETRIEVAL_A100_IPS = 2500
"""clip-retrieval's reported ViT-B/32 inference speed per A100, limited by image resizing."""


# --- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ceiling:
    """Images/s of the image tower alone on ready pixels, per batch size."""

    dtype: str
    eager: dict[int, float]
    compiled: dict[int, float]
    count: int
    """Pictures per pass."""

    @property
    def best_eager(self) -> tuple[int, float]:
        """(batch, images/s) of the fastest eager batch size."""
        return max(self.eager.items(), key=lambda kv: kv[1])

    @property
    def best_compiled(self) -> tuple[int, float]:
        return max(self.compiled.items(), key=lambda kv: kv[1])


@dataclass(frozen=True)
class PipelineRun:
    """One index_builder.py process: its loop's images/s, the whole process's, its memory,
    and its own per-image breakdown (ms)."""

    images_per_s: float
    indexed: int
    wall_s: float
    wall_images_per_s: float
    peak_rss_mb: float
    breakdown_ms: dict[str, float]


@dataclass(frozen=True)
class DecodeCosts:
    """Decoding and preprocessing per photo (CPU ms on one thread; `batch_pixels_ms`: wall
    ms per photo of the builder's batched preprocessing, on all cores)."""

    batch_pixels_ms: float
    decode_draft_ms: float
    decode_full_ms: float
    preprocess_processor_ms: float
    preprocess_encoder_ms: float
    draft_size: str


@dataclass(frozen=True)
class FastRound:
    """(d): one round's ceiling and pipelines, measured one after the other."""

    ceiling_ips: float
    pipeline: PipelineRun
    pipeline_exact_pixels: PipelineRun

    def share(self, key: str) -> float:
        """The `key` pipeline's images/s as a share of this round's ceiling."""
        run: PipelineRun = getattr(self, key)
        return run.images_per_s / self.ceiling_ips


@dataclass(frozen=True)
class FastModel:
    """(d): the 3-layer model's ceiling sweep, then its rounds."""

    ceiling_ips: float
    ceiling_batch: int
    ceiling_by_batch: dict[int, float]
    rounds: list[FastRound]

    def shares(self, key: str) -> list[float]:
        return [r.share(key) for r in self.rounds]

    def median_share(self, key: str) -> float:
        return round(statistics.median(self.shares(key)), 3)

    @property
    def median_round(self) -> FastRound:
        """The round whose pipeline share is the median (the lower middle for an even
        count)."""
        ranked = sorted(self.rounds, key=lambda r: r.share("pipeline"))
        return ranked[(len(ranked) - 1) // 2]

    def to_json(self) -> dict:
        return {
            "ceiling_ips": round(self.ceiling_ips, 2),
            "ceiling_batch": self.ceiling_batch,
            "ceiling_by_batch": {str(k): round(v, 2) for k, v in self.ceiling_by_batch.items()},
            "rounds": [asdict(r) for r in self.rounds],
            "pipeline_vs_ceiling": self.median_share("pipeline"),
            "pipeline_exact_pixels_vs_ceiling": self.median_share("pipeline_exact_pixels"),
        }


@dataclass(frozen=True)
class IndexThroughput:
    """What `measure` found: (a) to (d), the decode costs, the settings it ran with."""

    photos: int
    tokenizer: str
    naive_ips: float
    ceiling: Ceiling
    costs: DecodeCosts
    eager: PipelineRun
    """(c) index_builder.py as it runs by default."""
    eager_again: PipelineRun
    """The same, run again last (drift check)."""
    compiled: PipelineRun
    """(c) index_builder.py --compile, from a cold compile cache."""
    ablations: dict[str, PipelineRun]
    fast: FastModel | None
    """(d); None on a GPU."""
    batch: int
    workers: int
    cuda: bool
    """Measured on a GPU (BENCH_DEVICE=cuda)."""

    @property
    def bound_ips(self) -> float:
        """The physical bound of (c) uncompiled (see `physical_bound`)."""
        return physical_bound(
            self.eager.breakdown_ms, self.ceiling.best_eager[1], self.costs.batch_pixels_ms
        )

    def to_json(self) -> dict:
        eager_batch, eager_ips = self.ceiling.best_eager
        compiled_batch, compiled_ips = self.ceiling.best_compiled
        best, default, bound = self.compiled, self.eager, self.bound_ips
        result = {
            "photos": self.photos,
            "tokenizer": self.tokenizer,
            "index_naive_ips": round(self.naive_ips, 2),
            "index_ceiling_ips": round(compiled_ips, 2),
            "index_ceiling_batch": compiled_batch,
            "index_pipeline_ips": best.images_per_s,
            "index_pipeline_wall_ips": best.wall_images_per_s,
            "pipeline_vs_naive": round(best.images_per_s / self.naive_ips, 2),
            "pipeline_vs_ceiling": round(best.images_per_s / compiled_ips, 3),
            "index_ceiling_uncompiled_ips": round(eager_ips, 2),
            "index_ceiling_uncompiled_batch": eager_batch,
            "index_pipeline_uncompiled_ips": default.images_per_s,
            "index_pipeline_uncompiled_again_ips": self.eager_again.images_per_s,
            "uncompiled_pipeline_vs_naive": round(default.images_per_s / self.naive_ips, 2),
            "uncompiled_pipeline_vs_ceiling": round(default.images_per_s / eager_ips, 3),
            "physical_bound_ips": round(bound, 2),
            "uncompiled_pipeline_vs_bound": round(default.images_per_s / bound, 3),
            "index_ceiling_by_batch": _rounded(self.ceiling.eager),
            "index_ceiling_compiled_by_batch": _rounded(self.ceiling.compiled),
            "index_ceiling_dtype": self.ceiling.dtype,
            "index_pipeline": asdict(best),
            "index_pipeline_uncompiled": asdict(default),
            "ablations": {name: asdict(run) for name, run in self.ablations.items()},
            "decode_and_preprocess_ms": asdict(self.costs),
            "batch": self.batch,
            "workers": self.workers,
        }
        if self.fast is not None:
            result["fast_model"] = self.fast.to_json()
        if self.cuda:
            result["clip_retrieval_a100_ips"] = CLIP_RETRIEVAL_A100_IPS
        return result

    def to_markdown(self) -> str:
        blocks = [
            _throughput_table(self),
            _ceiling_sweep(self.ceiling),
            _breakdown_table(self),
            _bound_note(self),
        ]
        if self.fast is not None:
            blocks += _fast_blocks(self.fast, self.ceiling, self.costs.batch_pixels_ms)
        if self.cuda:
            blocks.append(_gpu_table(self))
        blocks.append(_decode_table(self.costs))
        return document(*blocks)


# --- measuring -------------------------------------------------------------------------------


def measure(quick: bool, workdir: Path) -> IndexThroughput:
    """(a) to (d) on the same photos, in one run."""
    count = 120 if quick else PHOTOS
    clip_dir = vit_b32_dir()
    clip = clip_dir.path
    photos = make_photos(workdir.parent / "photos", count)
    folder = workdir / "photos-subset"
    folder.mkdir(parents=True, exist_ok=True)
    for path in photos:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path)
    builder = Builder(folder, clip, workdir)

    naive_ips = naive(photos[: count // 2 if quick else count], clip, workdir)
    ceilings = ceiling(clip, quick)
    costs = decode_cost(photos, clip, ceilings.dtype)
    default = builder.run("pipeline")
    with tempfile.TemporaryDirectory(prefix="inductor-", dir=workdir) as cold_cache:
        compiled = builder.run(  # compiled from scratch, timed
            "pipeline_compiled", "--compile", env={"TORCHINDUCTOR_CACHE_DIR": cold_cache}
        )
    ablations = measure_ablations(builder)
    fast = fast_model(builder, quick) if DEVICE != "cuda" else None
    again = builder.run("pipeline_again")  # drift check, last
    return IndexThroughput(
        photos=count,
        tokenizer=clip_dir.tokenizer,
        naive_ips=naive_ips,
        ceiling=ceilings,
        costs=costs,
        eager=default,
        eager_again=again,
        compiled=compiled,
        ablations=ablations,
        fast=fast,
        batch=int(BATCH),
        workers=int(WORKERS),
        cuda=DEVICE == "cuda",
    )


def measure_ablations(builder: Builder) -> dict[str, PipelineRun]:
    """(c) with one optimisation undone at a time."""
    exact = replace(builder, script=EXACT_PIXELS_BUILDER)
    return {
        "Pillow's exact resize in the decode threads (before BatchPixels)": exact.run("abl_exact"),
        "fp32 instead of bf16": builder.run("abl_fp32", dtype="float32"),
        "1 decode thread": builder.run("abl_workers1", "--workers", "1"),
        "batch 8": builder.run("abl_batch8", "--batch-size", "8"),
        "OpenMP threads spinning (OMP_WAIT_POLICY=ACTIVE)": builder.run(
            "abl_spinning", env={"OMP_WAIT_POLICY": "ACTIVE"}
        ),
    }


def naive(photos: list[Path], clip: Path, workdir: Path) -> float:
    """Images/s of the one-at-a-time fp32 baseline."""
    import chromadb
    import torch
    from chromadb.config import Settings as ChromaSettings
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip).eval()
    processor = CLIPProcessor.from_pretrained(clip)
    client = chromadb.PersistentClient(
        path=str(workdir / "naive-chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = client.get_or_create_collection("naive", embedding_function=None)
    started = time.perf_counter()
    for n, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            features = model.get_image_features(**processor(images=image, return_tensors="pt"))
        vector = torch.nn.functional.normalize(features.pooler_output, dim=-1)[0].numpy()
        collection.add(ids=[str(n)], embeddings=[vector], metadatas=[{"path": str(path)}])
    return len(photos) / (time.perf_counter() - started)


def ceiling(
    clip: Path, quick: bool, *, compiled: bool = True, batches: tuple[int, ...] = ()
) -> Ceiling:
    """Images/s of the image tower alone on ready pixels, the builder's dtype: per batch size
    of the sweep (or of `batches`), eager and (unless not `compiled`) compiled, each the
    median of `PASSES` passes over at least two full batches of the largest size."""
    import torch

    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(clip), device=DEVICE, dtype="auto")
    encoder.load()
    cpu = encoder.device.type == "cpu"
    batches = batches or ((16, 32, 64, 128) if cpu else (64, 128, 256, 512))
    compiled_batches = ((int(BATCH),) if quick else batches) if compiled else ()
    count = 2 * max(batches)
    noise = np.random.default_rng(0).normal(size=(count, 3, 224, 224)).astype(np.float32)
    pixels = torch.from_numpy(noise).to(encoder.dtype)  # ready in the model's dtype

    def median_rate(batch: int) -> float:
        encoder.embed_pixels(pixels[:batch], batch_size=batch)  # warm-up at this shape
        rates = []
        for _ in range(PASSES):
            started = time.perf_counter()
            encoder.embed_pixels(pixels, batch_size=batch)
            rates.append(count / (time.perf_counter() - started))
        return statistics.median(rates)

    eager = {batch: median_rate(batch) for batch in batches}
    compiled_rates = {}
    for batch in compiled_batches:
        torch._dynamo.reset()  # one static shape per compile, as the builder compiles
        encoder.compile(batch)  # compiles now, untimed (the pipeline's wall time counts it)
        compiled_rates[batch] = median_rate(batch)
    dtype = str(encoder.dtype).removeprefix("torch.")
    return Ceiling(dtype, eager, compiled_rates, count)


@dataclass(frozen=True)
class Builder:
    """index_builder.py (or `script`, a variant of it) on the photos in `folder`, with the
    model in `clip`, its stores and logs under `workdir`."""

    folder: Path
    clip: Path
    workdir: Path
    script: str = "index_builder.py"

    def run(
        self, name: str, *args: str, env: dict[str, str] | None = None, **overrides: object
    ) -> PipelineRun:
        """Index into collection `name` as a process, with extra flags `args`, environment
        `env` and settings `overrides`: images/s of its decode → encode → store loop (from
        its summary), end to end images/s over the whole process's wall time (start-up,
        loading, compiling included), peak memory, and its per-image breakdown."""
        settings = bench_settings(self.workdir, self.clip, collection=name, **overrides)
        code, output, wall, rss = run_measured(
            [
                sys.executable,
                str(ROOT / self.script),
                "--folder",
                str(self.folder),
                "--no-progress",
                "--verbose",  # the per-image breakdown line
                "--batch-size",
                BATCH,
                "--workers",
                WORKERS,
                *args,
            ],
            subprocess_env(settings, **(env or {})),
            self.workdir,
        )
        if code != 0:
            raise RuntimeError(f"index_builder.py failed:\n{output}")
        return _pipeline_run(output, wall, rss)


def _pipeline_run(output: str, wall: float, rss: float) -> PipelineRun:
    """What index_builder.py's summary says, with the process's wall time and memory."""
    rate = re.search(r"\(([\d.]+) images/s\)", output)
    indexed = re.search(r"indexed ([\d,]+)", output)
    count = int(indexed.group(1).replace(",", "")) if indexed else 0
    per_image = re.search(r"per image: (.*)", output)
    breakdown = {
        name: float(ms)
        for name, ms in re.findall(r"(\w+) ([\d.]+) ms", per_image.group(1) if per_image else "")
    }
    return PipelineRun(
        images_per_s=float(rate.group(1)) if rate else 0.0,
        indexed=count,
        wall_s=round(wall, 1),
        wall_images_per_s=round(count / wall, 2) if wall else 0.0,
        peak_rss_mb=round(rss),
        breakdown_ms=breakdown,
    )


def decode_cost(photos: list[Path], clip: Path, dtype: str) -> DecodeCosts:
    """CPU milliseconds per photo on one thread: decoding with and without JPEG draft mode,
    and preprocessing with the processor's own code and with the encoder's (the one-pass
    path, when it applies); and the builder's batched preprocessing (`dtype`): wall
    milliseconds per photo on all cores, a batch of 32, the median of `PASSES`."""
    from core.images import load_image
    from core.models.encoder import DualEncoder

    encoder = DualEncoder(str(clip), device="cpu", dtype=dtype)
    data = [p.read_bytes() for p in photos[:60]]
    processor = encoder._model().processor.image_processor

    def per_photo(step) -> float:
        started = time.thread_time()
        for item in data:
            step(item)
        return round((time.thread_time() - started) / len(data) * 1000, 2)

    draft = [load_image(blob, min_side=encoder.input_size) for blob in data]
    pictures = iter(draft * 2)
    prepared = [encoder.prepare(picture) for picture in draft[:32]]
    encoder.batch_pixels(prepared)  # warm-up
    passes = []
    for _ in range(PASSES):
        started = time.perf_counter()
        encoder.batch_pixels(prepared)
        passes.append((time.perf_counter() - started) / len(prepared) * 1000)
    return DecodeCosts(
        batch_pixels_ms=round(statistics.median(passes), 2),
        decode_draft_ms=per_photo(lambda b: load_image(b, min_side=encoder.input_size)),
        decode_full_ms=per_photo(lambda b: load_image(b)),
        preprocess_processor_ms=per_photo(
            lambda _: processor(images=[next(pictures)], return_tensors="np")
        ),
        preprocess_encoder_ms=per_photo(lambda _: encoder.preprocess([next(pictures)])),
        draft_size="×".join(map(str, draft[0].size)),
    )


def fast_model(builder: Builder, quick: bool) -> FastModel:
    """(d): the ceiling sweep of a 3-layer ViT-B/32, then `FAST_ROUNDS` rounds of its
    ceiling at the best batch, the pipeline, and the pipeline with Pillow's exact resize,
    one after the other: each pipeline is compared with the ceiling of its own round, so a
    machine whose speed drifts (shared cores) does not skew the ratio, and the rounds show
    the spread."""
    clip = fast_vit_dir()
    fast = replace(builder, clip=clip)
    exact = replace(fast, script=EXACT_PIXELS_BUILDER)
    sweep = ceiling(clip, quick, compiled=False)
    batch, ceiling_ips = sweep.best_eager
    rounds = []
    for n in range(1 if quick else FAST_ROUNDS):
        ips = ceiling(clip, quick, compiled=False, batches=(batch,)).eager[batch]
        rounds.append(
            FastRound(
                ceiling_ips=round(ips, 2),
                pipeline=fast.run(f"fast_pipeline_{n}"),
                pipeline_exact_pixels=exact.run(f"fast_exact_{n}"),
            )
        )
    return FastModel(ceiling_ips, batch, sweep.eager, rounds)


def worker_ms(breakdown: dict[str, float]) -> float:
    """CPU ms per image of the worker threads (decode, preprocess, store) in a breakdown."""
    return sum(breakdown.get(k, 0.0) for k in ("decode_cpu", "preprocess_cpu", "store"))


def physical_bound(breakdown: dict[str, float], model_ips: float, batch_ms: float) -> float:
    """Images/s if the CPU work of the worker threads (decode, preprocess, store: CPU ms per
    image, summed over threads) shared the cores perfectly with the model's thread, which
    runs the model at `model_ips` and finishes each batch's pixels in `batch_ms` per image
    (measured alone), both on all cores: 1000 / (1000 / model_ips + batch_ms + workers_ms /
    cores). On a GPU the model does not use the CPU cores: there the bound is min(model,
    CPU work)."""
    workers = worker_ms(breakdown)
    if DEVICE == "cuda":
        other = workers + breakdown.get("batch_pixels", 0.0)
        return min(model_ips, 1000 * CORES / other) if other else model_ips
    return 1000 / (1000 / model_ips + batch_ms + workers / CORES)


# --- reporting -------------------------------------------------------------------------------


def _rounded(rates: dict[int, float]) -> dict[str, float]:
    return {str(k): round(v, 2) for k, v in rates.items()}


def _throughput_table(result: IndexThroughput) -> str:
    eager_batch, eager_ips = result.ceiling.best_eager
    compiled_batch, compiled_ips = result.ceiling.best_compiled
    best, default = result.compiled, result.eager

    def row(label: str, ips: float, ceiling_ips: float) -> list[str]:
        return [label, f"{ips:.1f}", f"{ips / result.naive_ips:.2f}×", f"{ips / ceiling_ips:.0%}"]

    dtype = result.ceiling.dtype
    return table(
        f"Index throughput, {result.photos} COCO-like 640×480 JPEGs, ViT-B/32 (random weights), "
        f"builder at batch {result.batch} with {result.workers} decode threads",
        ["run", "images/s", "vs naive", "vs ceiling of its kind"],
        [
            row("(a) naive: 1 at a time, fp32, 1 add each", result.naive_ips, eager_ips),
            row(
                f"(b) ceiling: image tower alone, {dtype}, best batch ({eager_batch})",
                eager_ips,
                eager_ips,
            ),
            row(
                f"(b) ceiling, compiled, best batch ({compiled_batch})",
                compiled_ips,
                compiled_ips,
            ),
            row("(c) index_builder.py end to end", default.images_per_s, eager_ips),
            row("(c) the same, run again last (drift)", result.eager_again.images_per_s, eager_ips),
            row("(c) index_builder.py --compile", best.images_per_s, compiled_ips),
            row(
                f"(c) --compile, whole process incl. start-up and a cold compile ({best.wall_s} s)",
                best.wall_images_per_s,
                compiled_ips,
            ),
            row("physical bound of (c) on these cores (see below)", result.bound_ips, eager_ips),
        ]
        + [
            row(f"(c) with {name}", run.images_per_s, eager_ips)
            for name, run in result.ablations.items()
        ],
    )


def _ceiling_sweep(ceilings: Ceiling) -> str:
    sweep = ", ".join(f"{b}: {r:.1f}" for b, r in ceilings.eager.items())
    compiled = ", ".join(f"{b}: {r:.1f}" for b, r in ceilings.compiled.items())
    return (
        f"\nCeiling sweep ({ceilings.dtype}, median of {PASSES} passes over {ceilings.count} "
        f"pictures): eager {sweep}; compiled {compiled}"
    )


def _breakdown_table(result: IndexThroughput) -> str:
    compiled = result.compiled.breakdown_ms
    return table(
        "Where (c)'s time goes, ms per indexed image (the builder's own breakdown)",
        ["step", "eager", "--compile"],
        [[name, ms, compiled.get(name, "")] for name, ms in result.eager.breakdown_ms.items()],
    )


def _bound_note(result: IndexThroughput) -> str:
    eager_ips, batch_ms = result.ceiling.best_eager[1], result.costs.batch_pixels_ms
    workers, bound = worker_ms(result.eager.breakdown_ms), result.bound_ips
    return (
        f"\ndecode_cpu and preprocess_cpu are CPU time in the decode threads, store in the "
        f"writer thread, batch_pixels (torch's resize and normalisation of each batch) and "
        f"model wall time on the model's thread; waiting_* is the model's thread idle. "
        f"Physical bound on {CORES} cores: the worker threads' work ({workers:.2f} CPU ms "
        f"per image) shared over the cores, plus the model at its ceiling "
        f"({1000 / eager_ips:.2f} ms per image on all cores) and batch_pixels measured alone "
        f"({batch_ms:.2f} ms per image on all cores): 1000 / ({1000 / eager_ips:.2f} + "
        f"{batch_ms:.2f} + {workers:.2f} / {CORES}) = {bound:.1f} images/s; (c) reaches "
        f"{result.eager.images_per_s / bound:.0%} of it."
    )


def _fast_blocks(fast: FastModel, full: Ceiling, batch_ms: float) -> list[str]:
    """(d)'s tables: each round's ceiling, pipelines and physical bound (`batch_ms`: the
    batched preprocessing measured alone, the same 224-pixel geometry as (c)'s) with their
    shares, the median share, and where the time goes in the median round; `full`: the
    full model's ceiling, which the 3-layer model's is compared with."""
    rounds = fast.rounds
    bounds = [physical_bound(r.pipeline.breakdown_ms, r.ceiling_ips, batch_ms) for r in rounds]
    bound_shares = [b / r.ceiling_ips for b, r in zip(bounds, rounds, strict=True)]
    speed_up = fast.ceiling_ips / full.best_eager[1]
    rounds_table = table(
        f"(d) The same with a 3-layer ViT-B/32 ({speed_up:.1f}× the full model's ceiling here: "
        "the model weighs what ViT-B/32 weighs on an Intel CPU with AMX), "
        f"{len(rounds)} round(s), each pipeline against its own round's ceiling",
        ["run", "images/s by round", "vs its round's ceiling"],
        [
            [
                f"ceiling: image tower alone, {full.dtype}, batch {fast.ceiling_batch}",
                ", ".join(f"{r.ceiling_ips:.1f}" for r in rounds),
                "100%",
            ],
            [
                "index_builder.py end to end",
                ", ".join(f"{r.pipeline.images_per_s:.1f}" for r in rounds),
                _spread(fast.shares("pipeline")),
            ],
            [
                "the same with Pillow's exact resize in the decode threads",
                ", ".join(f"{r.pipeline_exact_pixels.images_per_s:.1f}" for r in rounds),
                _spread(fast.shares("pipeline_exact_pixels")),
            ],
            [
                "physical bound of index_builder.py (as for (c), from its round's breakdown)",
                ", ".join(f"{b:.1f}" for b in bounds),
                _spread(bound_shares),
            ],
        ],
    )
    sweep = ", ".join(f"{b}: {round(r, 2)}" for b, r in fast.ceiling_by_batch.items())
    middle = fast.median_round
    fast_steps = middle.pipeline.breakdown_ms
    exact_steps = middle.pipeline_exact_pixels.breakdown_ms
    steps_table = table(
        f"(d) Where the time goes, ms per indexed image (round {rounds.index(middle) + 1}, "
        "the median one)",
        ["step", "index_builder.py", "with Pillow's exact resize"],
        [
            [name, fast_steps.get(name, ""), exact_steps.get(name, "")]
            for name in dict.fromkeys([*fast_steps, *exact_steps])
        ],
    )
    return [
        rounds_table,
        f"\n(d) ceiling sweep first (the best batch is used in the rounds): eager {sweep}",
        steps_table,
    ]


def _spread(shares: list[float]) -> str:
    """Shares as text: median 76% (74%, 76%, 80%)."""
    values = ", ".join(f"{share:.0%}" for share in shares)
    return f"median {statistics.median(shares):.0%} ({values})"


def _gpu_table(result: IndexThroughput) -> str:
    return table(
        "GPU throughput next to the public anchor",
        ["run", "images/s"],
        [
            ["clip-retrieval, ViT-B/32, one A100 (reported)", CLIP_RETRIEVAL_A100_IPS],
            [
                "(b) this GPU, image tower alone, compiled",
                f"{result.ceiling.best_compiled[1]:.0f}",
            ],
            ["(c) this GPU, index_builder.py end to end", f"{result.compiled.images_per_s:.0f}"],
        ],
    )


def _decode_table(costs: DecodeCosts) -> str:
    return table(
        f"Decode + preprocess per 640×480 JPEG, CPU ms on one thread (draft decode gives "
        f"{costs.draft_size})",
        ["step", "ms per photo"],
        [
            [
                "decode, draft mode (smallest DCT scale ≥ the model's input)",
                costs.decode_draft_ms,
            ],
            ["decode, full size", costs.decode_full_ms],
            ["preprocess, the HF processor's own code", costs.preprocess_processor_ms],
            ["preprocess, the encoder's (one pass, same pixels)", costs.preprocess_encoder_ms],
            [
                "preprocess, the builder's: torch's resize and normalisation of a batch of 32 "
                "on the model's thread (wall ms on all cores)",
                costs.batch_pixels_ms,
            ],
        ],
    )
