"""What every benchmark's measuring shares: the machine's description, timing statistics,
COCO-like synthetic photos, clustered vectors, and full-size models with random weights.
(The rendering of results is `bench.report`'s.)

Model weights cannot be downloaded here, so the benchmarks use the real architectures
with random weights: `CLIPModel(CLIPConfig())` has exactly the shapes and cost of
openai/clip-vit-base-patch32. Saved once to a directory, it loads through the project's
normal `CLIP_MODEL=<dir>` path.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny_clip"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- measuring -------------------------------------------------------------------------------


def machine() -> str:
    """One line: CPU model, cores, RAM, torch version and build."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB RAM{gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Timings:
    """Milliseconds of a repeated call: median, 95th percentile, mean (2 decimals), count."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    n: int

    @classmethod
    def of(cls, samples_s: list[float]) -> Timings:
        """The timings of `samples_s` (seconds each)."""
        ms = [s * 1000 for s in samples_s]
        return cls(
            p50_ms=round(percentile(ms, 50), 2),
            p95_ms=round(percentile(ms, 95), 2),
            mean_ms=round(statistics.fmean(ms), 2),
            n=len(ms),
        )


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process, in MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS) of a running process, in MB."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float, float]:
    """Run a command; return (exit code, output, wall seconds, peak RSS in MB).

    The peak is the child's own VmHWM, polled while it runs: getrusage's ru_maxrss would
    also count the parent's memory that the child held between fork and exec.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0.0
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()))
    reader.start()
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(0.1)
    reader.join()
    return (
        proc.returncode,
        b"".join(output).decode(errors="replace"),
        time.perf_counter() - started,
        peak,
    )


# --- data ------------------------------------------------------------------------------------


def coco_like_jpeg(rng: random.Random, size: tuple[int, int] = (640, 480)) -> bytes:
    """A 640×480 JPEG (quality 90) with the texture, detail and file size of a COCO photo:
    smooth colour regions, shapes, edges and sensor noise."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    base = nprng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.BICUBIC)
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(6, 14)):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        x1, y1 = x0 + rng.randrange(20, 240), y0 + rng.randrange(20, 200)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            pen.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            pen.rectangle((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    noise = nprng.normal(0, 18, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` COCO-like photos in `folder` (made once, reused by later runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for n in range(count):
        path = folder / f"photo_{n:06d}.jpg"
        data = coco_like_jpeg(rng)  # always drawn, so photo n is the same whatever the count
        if not path.exists():
            path.write_bytes(data)
        paths.append(path)
    return paths


def clip_like_vectors(
    count: int, dim: int = 512, latent: int = 48, clusters: int = 3000, seed: int = 0
) -> np.ndarray:
    """Unit vectors shaped like CLIP embeddings (uniform random vectors are not): a low
    intrinsic dimension, topic clusters of very uneven size, and a direction all share
    (their cosines are described in docs/benchmarks.md).
    """
    return next(clip_like_batches(count, count, dim, latent, clusters, seed))


def clip_like_batches(
    count: int,
    batch: int,
    dim: int = 512,
    latent: int = 48,
    clusters: int = 3000,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """`clip_like_vectors(count)` drawn `batch` rows at a time, so a million of them never
    need more than one batch of float64 scratch memory. All batches share one space (the
    projection, the clusters and the shared direction); with `batch >= count` the single
    batch equals `clip_like_vectors(count)`."""
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    centres = rng.normal(size=(clusters, latent))
    sizes = rng.zipf(1.6, clusters).astype(float)
    shared = None
    for start in range(0, count, batch):
        rows = min(batch, count - start)
        labels = rng.choice(clusters, rows, p=sizes / sizes.sum())
        points = (centres[labels] * 0.8 + rng.normal(size=(rows, latent)) * 0.6) @ projection
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        if shared is None:  # drawn here, as it always was: the first batch keeps its values
            shared = rng.normal(size=dim)
            shared /= np.linalg.norm(shared)
        points += 0.9 * shared + rng.normal(size=(rows, dim)) * 0.15 / np.sqrt(dim)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        yield points.astype(np.float32)


# --- models with the real architectures and random weights ------------------------------------


@dataclass(frozen=True)
class ClipDir:
    path: Path
    tokenizer: str
    """"real CLIP BPE" or "tiny fixture tokenizer (fallback)"."""


def vit_b32_dir() -> ClipDir:
    """openai/clip-vit-base-patch32's architecture with random weights, in HF format, with
    CLIP's real tokenizer when it can be built (from open_clip's BPE file on PyPI)."""
    path = CACHE / "clip-vit-base-patch32-random"
    marker = path / "bench-tokenizer.txt"
    if marker.exists():
        return ClipDir(path, marker.read_text())
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, kind = _clip_tokenizer()
    config = CLIPConfig()
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(path)
    marker.write_text(kind)
    return ClipDir(path, kind)


def fast_vit_dir(layers: int = 3) -> Path:
    """`vit_b32_dir()` with only the first `layers` of the image tower's 12: a much faster
    model (index_throughput's (d) reports by how much), so that on an AMD CPU it weighs
    about what ViT-B/32 weighs on an Intel CPU with AMX, and the work around the model
    weighs as much as it does there."""
    path = CACHE / f"clip-vit-base-patch32-random-{layers}-layers"
    if (path / "config.json").exists():
        return path
    from transformers import CLIPModel, CLIPProcessor

    source = vit_b32_dir().path
    model = CLIPModel.from_pretrained(source)
    model.vision_model.encoder.layers = model.vision_model.encoder.layers[:layers]
    model.config.vision_config.num_hidden_layers = layers
    model.save_pretrained(path)
    CLIPProcessor.from_pretrained(source).save_pretrained(path)
    return path


def _clip_tokenizer():
    """CLIP's real BPE (49,408 tokens) from open_clip's wheel, or the fixture's tokenizer."""
    from transformers import CLIPTokenizer

    try:
        vocab_dir = _real_clip_vocab()
        vocab = json.loads((vocab_dir / "vocab.json").read_text())
        lines = (vocab_dir / "merges.txt").read_text().split("\n")[1:]
        merges = [tuple(line.split()) for line in lines]
        # transformers 5 builds the tokenizer from the objects (file paths are ignored).
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        return tokenizer, "real CLIP BPE"
    except (OSError, subprocess.CalledProcessError, KeyError) as err:
        print(f"(real CLIP tokenizer unavailable: {err}; using the fixture's)", flush=True)
        return CLIPTokenizer.from_pretrained(TINY_CLIP), "tiny fixture tokenizer (fallback)"


def _real_clip_vocab() -> Path:
    """vocab.json and merges.txt exactly as OpenAI's CLIP builds them from its BPE file."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    out = CACHE / "clip-bpe"
    if (out / "vocab.json").exists():
        return out
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(wheels),
            "open_clip_torch==3.3.0",
        ],
        check=True,
    )
    wheel = next(wheels.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        bpe = gzip.decompress(archive.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode()
    merges = [tuple(line.split()) for line in bpe.split("\n")[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return out


def bench_settings(workdir: Path, clip: Path, **overrides: object):
    """Settings for a benchmark run: a store in `workdir`, no `.env`."""
    from core.config import Settings

    values: dict[str, object] = {
        "clip_model": str(clip),
        "chroma_path": workdir / "chroma",
        "collection": "bench",
        "device": os.environ.get("BENCH_DEVICE", "auto"),
        "dtype": "auto",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def subprocess_env(settings, **extra: str) -> dict[str, str]:
    """The environment that hands `settings` to an entry point run as a subprocess."""
    from core.config import Settings, settings_env

    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def start_bot(env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """`python -m bot` with `env`, its output in `log_path`; returns once it polls Telegram
    (raises RuntimeError, the bot stopped, when it does not start within 5 minutes)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while "Application started" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the bot did not start: {log_path.read_text()}")
        time.sleep(0.2)
    return proc
