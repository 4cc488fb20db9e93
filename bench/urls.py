"""The `urls` section: a URL list downloaded by the builder's URL stage and by img2dataset, side
by side in one run, from a local site with the faults real lists hold (bench/url_site.py: many
loopback hosts, 50 ms latency per request, COCO-like JPEGs of about 150 kB, 10% failures of
every kind). Nothing leaves 127.0.0.0/8.

- Ours: `download_url_list` with the options `index_builder.py --urls LIST --allow-private-urls`
  builds (`download_options`), in a process of its own (`python -m bench.urls ours ...`):
  download, a decode of every picture, the files, the manifest and the state. Then the whole
  `index_builder.py --urls` with the tiny fixture CLIP (download + index), once.
- img2dataset, pinned, in a virtual environment of its own under bench/.cache (made on demand;
  BENCH_IMG2DATASET_VENV names another), never the project's: the same list as CSV, every
  picture decoded by OpenCV (`resize_mode no`: no resize; `skip_reencode`: the original bytes
  are kept, as ours keeps them), files out, the same timeout, no retries, no EXIF or hash.
- Rates: URLs settled (kept or failed) per second of wall time, and pictures kept per second;
  memory: the process tree's peak RSS (VmHWM of each process, summed) and its peak PSS (shared
  pages counted once, sampled every 0.1 s).

`measure` returns a `UrlsBench`, which renders its JSON and its tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import CACHE, ROOT, TINY_CLIP, bench_settings, coco_like_jpeg, subprocess_env
from bench.report import document, table
from bench.url_site import FAULTS

IMG2DATASET = "img2dataset==1.47.0"
IMG2DATASET_THREADS = 128
"""Threads per img2dataset process (its default is 256): of 64, 128 and 256, tried side by
side on this list, 128 was the fastest, by a little."""
NOTES = (
    "ours: the builder's URL stage as `index_builder.py --urls LIST --allow-private-urls` runs "
    "it (download, a decode of each picture, files, manifest, state); index_builder.py: the "
    "whole build (that download, then indexing with the tiny fixture CLIP); img2dataset: "
    "download, a decode of each picture, files. URLs/s counts every URL settled, kept or "
    "failed. Peak RSS adds up each process's own peak (img2dataset runs a process per core "
    "and a logger); PSS, sampled every 0.1 s, counts shared pages once."
)
CAPTIONS = ("a dog on a red sofa", "two people riding bikes", "a plate of pasta", "a city bus")


@dataclass(frozen=True)
class Plan:
    """The list and the site: how many URLs, hosts and distinct pictures, how slow."""

    urls: int = 5000
    hosts: int = 50
    pictures: int = 50
    failure_share: float = 0.10
    latency_ms: float = 50.0
    deadline_s: float = 10.0
    """URL_FETCH_TIMEOUT_S for ours, `--timeout` for img2dataset."""
    rounds: int = 2
    """Each client downloads the list this many times, interleaved."""
    img2dataset: bool = True
    whole_builder: bool = True


FULL = Plan()
QUICK = Plan(
    urls=300,
    hosts=10,
    pictures=10,
    deadline_s=2.0,
    rounds=1,
    img2dataset=False,
    whole_builder=False,
)


@dataclass(frozen=True)
class ListRun:
    """One download of the whole list by one client."""

    client: str
    wall_s: float
    urls: int
    pictures: int
    """Pictures kept (valid, on disk)."""
    failed: int
    peak_rss_mb: float
    peak_pss_mb: float
    cpu_s: float
    """User + system CPU time of the whole process tree."""
    kept: dict[str, int] = field(default_factory=dict)
    """Pictures kept per kind of URL ("ok" and each fault)."""

    @property
    def urls_per_s(self) -> float:
        return round(self.urls / self.wall_s, 1)

    @property
    def pictures_per_s(self) -> float:
        return round(self.pictures / self.wall_s, 1)

    def counts(self) -> list[object]:
        """Kept, failed, CPU, peak RSS and PSS, as the table shows them."""
        memory = [f"{self.peak_rss_mb:.0f}", f"{self.peak_pss_mb:.0f}"]
        return [self.pictures, self.failed, f"{self.cpu_s:.1f}", *memory]


@dataclass(frozen=True)
class UrlsBench:
    """What `measure` found: each client's runs, in the order they ran."""

    plan: Plan
    kinds: dict[str, int]
    """URLs of the list per kind."""
    runs: list[ListRun]
    img2dataset: str
    """The command's options, or why img2dataset did not run."""

    def _of(self, client: str) -> list[ListRun]:
        return [run for run in self.runs if run.client == client]

    def _median_rate(self, client: str) -> float | None:
        runs = self._of(client)
        return round(statistics.median(r.urls_per_s for r in runs), 1) if runs else None

    def _peak(self, client: str) -> float | None:
        runs = self._of(client)
        return max(r.peak_rss_mb for r in runs) if runs else None

    def to_json(self) -> dict:
        return {
            "urls": self.plan.urls,
            "urls_per_s": self._median_rate("ours"),
            "img2dataset_urls_per_s": self._median_rate("img2dataset"),
            "urls_peak_rss_mb": self._peak("ours"),
            "img2dataset_peak_rss_mb": self._peak("img2dataset"),
            "builder_urls_per_s": self._median_rate("index_builder.py"),
            "plan": asdict(self.plan),
            "kinds": self.kinds,
            "img2dataset": {"options": self.img2dataset},
            "runs": {
                f"{n} {r.client}": {**asdict(r), "urls_per_s": r.urls_per_s}
                for n, r in enumerate(self.runs, 1)
            },
        }

    def to_markdown(self) -> str:
        plan = self.plan
        rows = [
            [r.client, f"{r.wall_s:.1f}", r.urls_per_s, r.pictures_per_s, *r.counts()]
            for r in self.runs
        ]
        header = ["client", "wall s", "URLs/s", "pictures/s", "kept", "failed", "CPU s"]
        header += ["peak RSS MB", "peak PSS MB"]
        clients = list(dict.fromkeys(r.client for r in self.runs))
        kind_header = ["kind", "URLs", *clients]
        kept = [
            [kind, count] + [self._of(c)[0].kept.get(kind, 0) for c in clients]
            for kind, count in self.kinds.items()
        ]
        return document(
            f"{plan.urls:,} URLs on {plan.hosts} loopback hosts, {plan.latency_ms:g} ms latency "
            f"per request, {plan.failure_share:.0%} failing, deadline {plan.deadline_s:g} s; "
            "each client downloads the whole list into an empty folder, runs interleaved.",
            table("URL list download", header, rows),
            table("Pictures kept per kind of URL (each client's first run)", kind_header, kept),
            "\n" + NOTES,
            f"\nimg2dataset: {self.img2dataset}",
        )


def measure(quick: bool, workdir: Path, plan: Plan | None = None) -> UrlsBench:
    """Start the site, write the list, then download it with each client in turn."""
    plan = plan or (QUICK if quick else FULL)
    workdir.mkdir(parents=True, exist_ok=True)
    pool = _pictures(workdir / "pool", plan.pictures)
    img2dataset, why = _img2dataset(plan)
    with _started_site(pool, plan) as ports:
        list_path, kinds = write_list(workdir / "list.csv", ports, plan)
        runs = []
        for n in range(plan.rounds):
            runs.append(run_ours(list_path, workdir / f"ours-{n}", plan))
            if img2dataset is not None:
                try:
                    runs.append(run_img2dataset(img2dataset, list_path, workdir / f"i2d-{n}", plan))
                except RuntimeError as err:
                    img2dataset, why = None, f"failed: {str(err)[-500:]}"
        if plan.whole_builder:
            runs.append(run_builder(list_path, workdir / "builder", plan))
    _drop_downloads(workdir)
    return UrlsBench(plan, dict(kinds), runs, why)


def _drop_downloads(workdir: Path) -> None:
    """Remove what each run downloaded (about 700 MB a run); its output.log stays."""
    for run_dir in workdir.iterdir():
        if run_dir.is_dir() and run_dir.name != "pool":
            for path in run_dir.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)


# --- the list and the site -------------------------------------------------------------------


def write_list(path: Path, ports: dict[str, int], plan: Plan) -> tuple[Path, Counter[str]]:
    """A CSV list (caption, url) both clients read: `failure_share` of its URLs fail, every
    fault in turn, shuffled, on hosts drawn at random; each URL distinct. The URLs per kind."""
    rng = random.Random(0)
    failing = round(plan.urls * plan.failure_share)
    kinds = ["ok"] * (plan.urls - failing) + [FAULTS[n % len(FAULTS)] for n in range(failing)]
    rng.shuffle(kinds)
    hosts = sorted(ports)
    with open(path, "w", encoding="utf-8") as f:
        f.write("caption,url\n")
        for n, kind in enumerate(kinds):
            host = rng.choice(hosts)
            f.write(f"{CAPTIONS[n % len(CAPTIONS)]} {n},http://{host}:{ports[host]}/{kind}/{n}\n")
    return path, Counter(kinds)


def kind_of(url: str) -> str:
    """The kind of a list URL: "ok" or a fault (its path's first part)."""
    return url.split("/")[3]


def _pictures(folder: Path, count: int) -> Path:
    """`count` distinct COCO-like JPEGs (100-200 kB) in `folder`, made once."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for n in range(count):
        path = folder / f"{n:04d}.jpg"
        data = coco_like_jpeg(rng)
        if not 100_000 <= len(data) <= 200_000:
            raise RuntimeError(f"a COCO-like JPEG of {len(data):,} bytes, not 100-200 kB")
        if not path.exists():
            path.write_bytes(data)
    return folder


@contextlib.contextmanager
def _started_site(pool: Path, plan: Plan):
    """bench/url_site.py in its own process; yields {address: port}; stops it after."""
    stall_s = plan.deadline_s * 1.2
    cmd = [sys.executable, "-m", "bench.url_site", str(pool), "--hosts", str(plan.hosts)]
    cmd += ["--latency-ms", str(plan.latency_ms), "--stall-s", str(stall_s)]
    site = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(site.stdout.readline())
    finally:
        site.stdin.close()
        try:
            site.wait(timeout=30)
        except subprocess.TimeoutExpired:
            site.kill()
            site.wait()


# --- the clients -----------------------------------------------------------------------------


def run_ours(list_path: Path, data_dir: Path, plan: Plan) -> ListRun:
    """The builder's URL stage in a process of its own (`main` below)."""
    cmd = [sys.executable, "-m", "bench.urls", "ours", str(list_path), str(data_dir)]
    watched = watch([*cmd, str(plan.deadline_s)], _env(PYTHONPATH=str(ROOT)), data_dir, plan)
    done = json.loads(watched.output.strip().splitlines()[-1])
    return watched.run(
        "ours", plan.urls, done["downloaded"], _kept_by_manifest(list_path, data_dir)
    )


def run_builder(list_path: Path, workdir: Path, plan: Plan) -> ListRun:
    """The whole `index_builder.py --urls` (download, then index) with the tiny fixture CLIP."""
    settings = bench_settings(
        workdir,
        TINY_CLIP,
        data_dir=workdir / "data",
        url_fetch_timeout_s=plan.deadline_s,
        device="cpu",
        dtype="float32",
    )
    cmd = [sys.executable, str(ROOT / "index_builder.py"), "--urls", str(list_path)]
    cmd += ["--allow-private-urls", "--no-progress", "--batch-size", "32"]
    watched = watch(cmd, subprocess_env(settings), workdir, plan)
    kept = _kept_by_manifest(list_path, workdir / "data")
    return watched.run("index_builder.py", plan.urls, sum(kept.values()), kept)


def run_img2dataset(exe: Path, list_path: Path, out: Path, plan: Plan) -> ListRun:
    """img2dataset over the same list: every picture decoded, the original bytes kept."""
    cmd = [str(exe), "--url_list", str(list_path), "--output_folder", str(out / "files")]
    cmd += img2dataset_options(plan)
    watched = watch(cmd, _env(no_proxy="*", WANDB_MODE="disabled"), out, plan)
    stats = [json.loads(p.read_text()) for p in (out / "files").glob("*_stats.json")]
    kept: Counter[str] = Counter()
    for meta in (out / "files").glob("*/*.json"):
        kept[kind_of(json.loads(meta.read_text())["url"])] += 1
    return watched.run("img2dataset", plan.urls, sum(s["successes"] for s in stats), dict(kept))


def img2dataset_options(plan: Plan) -> list[str]:
    """Comparable to ours: a CSV list, files out, a real decode (OpenCV) with no resize and
    the original bytes kept, the same timeout, no retries, no EXIF, no hash, a process per
    core."""
    processes = os.cpu_count() or 1
    options = {
        "input_format": "csv",
        "url_col": "url",
        "caption_col": "caption",
        "output_format": "files",
        "resize_mode": "no",
        "skip_reencode": "True",
        "timeout": f"{plan.deadline_s:g}",
        "retries": "0",
        "extract_exif": "False",
        "compute_hash": "None",
        "processes_count": str(processes),
        "thread_count": str(IMG2DATASET_THREADS),
        "number_sample_per_shard": str(math.ceil(plan.urls / processes)),  # a shard each
        "enable_wandb": "False",
    }
    return [part for name, value in options.items() for part in (f"--{name}", value)]


def _img2dataset(plan: Plan) -> tuple[Path | None, str]:
    """img2dataset's executable (installed on first use), and its options or why not."""
    if not plan.img2dataset:
        return None, "not run (--quick)"
    venv = Path(os.environ.get("BENCH_IMG2DATASET_VENV", CACHE / "img2dataset-venv"))
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"(installing {IMG2DATASET} into {venv})", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", IMG2DATASET]
        installed = (
            made.returncode == 0 and subprocess.run(pip, capture_output=True).returncode == 0
        )
        if not installed:
            return None, f"not run: {IMG2DATASET} could not be installed into {venv}"
    return exe, f"{IMG2DATASET} " + " ".join(img2dataset_options(plan))


def _kept_by_manifest(list_path: Path, data_dir: Path) -> dict[str, int]:
    from core.sources.url_lists import Folder, read_manifest

    manifest = Folder.of(list_path, data_dir).manifest
    return dict(Counter(kind_of(url) for url in read_manifest(manifest)))


def _env(**extra: str) -> dict[str, str]:
    """This environment without proxies (every request stays on loopback), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


# --- watching a process tree -----------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    output: str
    wall_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    cpu_s: float

    def run(self, client: str, urls: int, pictures: int, kept: dict[str, int]) -> ListRun:
        return ListRun(
            client,
            round(self.wall_s, 2),
            urls,
            pictures,
            urls - pictures,
            round(self.peak_rss_mb, 1),
            round(self.peak_pss_mb, 1),
            round(self.cpu_s, 1),
            kept,
        )


def watch(cmd: list[str], env: dict[str, str], cwd: Path, plan: Plan) -> Watched:
    """Run `cmd` in its own session; its output, wall time, and its process tree's peak RSS
    (each process's VmHWM, summed), peak PSS (sampled) and CPU time. Raises RuntimeError on
    failure."""
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / "output.log"
    limit = time.monotonic() + 120 + plan.urls * plan.deadline_s / 20
    started, cpu = time.perf_counter(), _children_cpu_s()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    peaks: dict[int, float] = {}
    pss = 0.0
    while proc.poll() is None:
        tree = _tree(proc.pid)
        for pid in tree:
            with contextlib.suppress(OSError, ValueError):
                peaks[pid] = _status_kb(pid, "VmHWM") / 1024
        pss = max(pss, sum(_pss_kb(pid) for pid in tree) / 1024)
        if time.monotonic() > limit:
            os.killpg(proc.pid, 9)
        time.sleep(0.1)
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - cpu
    output = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {output[-2000:]}")
    return Watched(output, wall, sum(peaks.values()), pss, cpu)


def _children_cpu_s() -> float:
    """CPU seconds of this process's ended children (and of the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree(root: int) -> list[int]:
    """`root` and its descendants now."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise ValueError(key)


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


# --- ours, as a process of its own ------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`python -m bench.urls ours LIST DATA_DIR DEADLINE_S`: the URL stage exactly as
    `index_builder.py --urls LIST --allow-private-urls` runs it; its counts as one JSON line."""
    import index_builder
    from core.config import Settings
    from core.sources.url_downloads import download_url_list

    _, list_path, data_dir, deadline_s = argv
    args = index_builder.build_parser().parse_args(
        ["--urls", list_path, "--allow-private-urls", "--no-progress"]
    )
    settings = Settings(_env_file=None, data_dir=Path(data_dir), url_fetch_timeout_s=deadline_s)
    done = download_url_list(
        args.urls, settings.data_dir, index_builder.download_options(settings, args)
    )
    print(json.dumps({"downloaded": done.downloaded, "failed": dict(done.failed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
