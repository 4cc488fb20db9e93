"""Cost curves at scale: one collection grown 100k → 300k → 1M CLIP-like 512-d vectors with
COCO-like metadata (`--quick`: 30k → 100k), served in turn by embedded Chroma and by a Chroma
server (`chroma run` on 127.0.0.1) over the same files, so both modes are measured on the
same data and the million vectors are inserted once. At each size, in each mode:

- the insert rate, through the project's `VectorStore.upsert`: embedded over the bulk of
  the step, the server over the step's last `SAMPLE` vectors;
- the first access after opening (Chroma then loads the collection's index);
- top-10 query latency with metadata, for image-like and text-like query vectors, and their
  recall@10 against exact (brute-force) search over the same vectors;
- the same against the search effort, and the text searches' depth that the end of a build
  would choose (bench/scale_effort.py: text-like queries sit outside the picture vectors'
  cloud, where the graph search misses more);
- the Chroma process's memory (VmRSS now, VmHWM peak) and the collection's size on disk;
- start-up at scale: `python -m core status`, and `python -m bot` against the collection
  (start-up time and memory, then its first search).

Embedded Chroma runs in a child process that the bench sends its store calls to, so its
memory is measured alone, as the server's is; the bench process keeps the vectors for the
exact search. Never two writers at once: the child is closed while the server runs.

`measure` returns a `Scale`, which renders its JSON and its tables.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import (
    Timings,
    bench_settings,
    clip_like_batches,
    machine,
    make_photos,
    peak_rss_mb,
    rss_mb,
    run_measured,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.query_latency import coco_like_record, exact_top_k, text_like
from bench.report import document, table, write_json
from bench.scale_effort import (
    EF_SEARCH,
    TARGET,
    Effort,
    Tuned,
    at,
    captions,
    depths,
    effort_tables,
    efforts,
    tuned_of,
)
from tests.chroma_run import running_chroma

log = logging.getLogger(__name__)

SIZES = (100_000, 300_000, 1_000_000)
QUICK_SIZES = (30_000, 100_000)
BATCH = 50_000
"""Vectors sent to the store per call (it splits them into Chroma's largest batch)."""
QUERIES = 200
WARM_UP = 5
DIM = 512
COLLECTION = "scale"
SAMPLE = 20_000
"""Vectors the server inserts at the end of each step (its insert rate's sample)."""


@dataclass(frozen=True)
class BotStart:
    """`python -m bot` against the collection: start-up, then its first search."""

    start_s: float
    """From launching the process to polling Telegram (CLIP loaded, collection opened)."""
    start_rss_mb: float
    first_search_s: float
    """From the message sent to the album received (embedded: the index may load here)."""
    rss_after_search_mb: float


@dataclass(frozen=True)
class Point:
    """One mode at one collection size."""

    mode: str
    vectors: int
    inserted_from: int
    inserted_to: int
    """The insert rate was measured over vectors `inserted_from` → `inserted_to`."""
    insert_per_s: float
    insert_per_s_by_batch: tuple[int, ...]
    load_s: float
    """The first access after opening the collection (Chroma loads its index then)."""
    elapsed_s: float
    """Since the section started: inserts and every measurement before this one."""
    image_query: Timings
    text_query: Timings
    """At the store's own search depth (ef_search 128), as before the text searches' depth."""
    recall_image: float
    recall_text_default: float
    """Text-like recall@10 at the store's own search depth (`recall_text` before issue 24)."""
    chroma_rss_mb: float
    chroma_peak_rss_mb: float
    disk_mb: float
    status_s: float
    """`python -m core status`: from its imports done to the answer."""
    status_process_s: float
    """The same, the whole process (interpreter start and imports included)."""
    bot: BotStart
    depths: tuple[Effort, ...] = ()
    """Recall and query times at each search depth (`scale_effort.depths()`)."""
    ef_search: tuple[Effort, ...] = ()
    """At each of the collection's ef_search values `EF_SEARCH` (embedded only)."""
    text_depth: int = 0
    """The text searches' depth chosen at the end of the build at this size."""

    @property
    def recall_text(self) -> float:
        """Text-like recall@10 at the chosen depth (what a text search gets)."""
        return at(self.depths, self.text_depth).recall_text

    @property
    def text_p50_ms(self) -> float:
        """Median top-10 text-like query at the chosen depth."""
        return at(self.depths, self.text_depth).text_query.p50_ms


class Filler:
    """Grows the collection and times searches, through the project's `VectorStore`."""

    def __init__(self, settings, photo: Path) -> None:
        from core.search.sendable_files import record_roots
        from core.store.database import Database
        from core.store.records import ImageRecord

        self.photo = photo
        self.store = Database(settings).open(
            COLLECTION, ImageRecord, model=settings.clip_model, dim=DIM, create=True
        )
        record_roots(settings, [str(photo.parent)])  # the bot sends only files there

    def add(self, start: int, vectors: np.ndarray) -> float:
        """Insert records `start`… with `vectors`; returns the upsert's seconds."""
        records = [coco_like_record(start + n, self.photo) for n in range(len(vectors))]
        started = time.perf_counter()
        self.store.upsert(records, vectors)
        return time.perf_counter() - started

    def load(self) -> float:
        """Seconds of the first count after opening (Chroma loads the collection then)."""
        started = time.perf_counter()
        self.store.count()
        return time.perf_counter() - started

    def sweep(
        self, queries: dict[str, np.ndarray], depths: tuple[int, ...]
    ) -> dict[int, dict[str, tuple[list[list[str]], list[float]]]]:
        """{depth: {kind: (top-10 ids of each query, its seconds)}}: one query at a time with
        metadata, as the bot asks, every depth in turn for each query (drift hits all alike)."""
        found: dict = {d: {kind: ([], []) for kind in queries} for d in depths}
        for kind, vectors in queries.items():
            for query in vectors:
                for depth in depths:
                    started = time.perf_counter()
                    [matches] = self.store.query(query[None, :], 10, depth=depth)
                    found[depth][kind][1].append(time.perf_counter() - started)
                    found[depth][kind][0].append([m.record.id for m in matches])
        return found

    def tune(self, vectors: np.ndarray, target: float):
        """The end of a build's choice of the text searches' depth (`core.indexing.recall`),
        with `vectors` as the captions' embeddings; recorded in the collection like a build's."""
        from core.indexing.recall import RecallCheck, TextQueries, tune

        texts = TextQueries(tuple(str(n) for n in range(len(vectors))), "captions")
        return tune(self.store, _Embedded(vectors), texts, RecallCheck(target=target))

    def set_ef_search(self, ef: int) -> None:
        """Change the collection's ef_search (Chroma applies it when it next loads the index)."""
        self.store._collection.modify(configuration={"hnsw": {"ef_search": ef}})


class _Embedded:
    """An encoder stand-in for `Filler.tune`: text "n" embeds to row n of the vectors."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def embed_texts(self, texts) -> np.ndarray:
        return self.vectors[[int(text) for text in texts]]


def _serve(conn, settings, photo: Path) -> None:
    """The embedded child: a `Filler` whose calls arrive on `conn`; `None` ends it."""
    try:
        filler = Filler(settings, photo)
    except Exception as err:  # reported to the parent, which raises it
        conn.send(err)
        return
    conn.send(None)
    while (call := conn.recv()) is not None:
        name, args = call
        try:
            conn.send(getattr(filler, name)(*args))
        except Exception as err:
            conn.send(err)


class EmbeddedChroma:
    """A `Filler` on an embedded Chroma (PersistentClient) in a child process."""

    def __init__(self, settings, photo: Path) -> None:
        context = multiprocessing.get_context("spawn")  # no copy of the bench's memory
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_serve, args=(child, settings, photo), daemon=True)
        self._proc.start()
        child.close()
        self.pid = self._proc.pid
        self._receive()

    def add(self, start: int, vectors: np.ndarray) -> float:
        return self._ask("add", start, vectors)

    def load(self) -> float:
        return self._ask("load")

    def sweep(self, queries: dict[str, np.ndarray], depths: tuple[int, ...]) -> dict:
        return self._ask("sweep", queries, depths)

    def tune(self, vectors: np.ndarray, target: float):
        return self._ask("tune", vectors, target)

    def set_ef_search(self, ef: int) -> None:
        self._ask("set_ef_search", ef)

    def _ask(self, name: str, *args: object):
        self._conn.send((name, args))
        return self._receive()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the child is already gone
            self._conn.send(None)
        self._proc.join(60)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def _receive(self):
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass(frozen=True)
class Inserted:
    """A timed insert of base vectors `start` → `stop`."""

    start: int
    stop: int
    seconds: float
    per_batch: tuple[int, ...]
    """Vectors per second of each `BATCH` (the rate falls as the graph grows)."""


@dataclass(frozen=True)
class Truth:
    """The query vectors (image-like and text-like), and each one's exact top-10 rows at
    each size: what the store's answers are checked against."""

    queries: dict[str, np.ndarray]
    exact: dict[int, dict[str, np.ndarray]]


HEADLINES = (
    "insert_per_s",
    "recall_text",
    "text_p50_ms",
    "text_depth",
    "recall_text_default",
    "chroma_rss_mb",
    "disk_mb",
    "status_s",
)
"""The summary's numbers of each point: `recall_text` and `text_p50_ms` at the text searches'
chosen depth (`text_depth`), `recall_text_default` at the store's own (ef_search 128)."""


@dataclass(frozen=True)
class Scale:
    """What `measure` found: each mode at each size, and the depth chosen at each size."""

    sizes: tuple[int, ...]
    points: list[Point]
    tuned: list[Tuned]

    def to_json(self) -> dict:
        return {
            "sizes": list(self.sizes),
            "queries": QUERIES,
            "hnsw": _project_hnsw(),
            "recall_target": TARGET,
            "points": _by_name(self.points),
            "tuned": {f"{t.vectors}": asdict(t) for t in self.tuned},
            **{
                f"{p.mode}_{p.vectors // 1000}k_{key}": getattr(p, key)
                for p in self.points
                for key in HEADLINES
            },
        }

    def to_markdown(self) -> str:
        return document(
            _cost_table(self.points),
            *effort_tables(self.points, self.tuned),
            _startup_table(self.points),
        )


@dataclass(frozen=True)
class Phase:
    """What one mode measures at one size, besides the store's own answers."""

    mode: str
    size: int
    inserted: Inserted
    load_s: float


def grow(
    sizes: tuple[int, ...], base: np.ndarray, truth: Truth, workdir: Path, photo: Path
) -> tuple[list[Point], list[Tuned]]:
    """Fill the collection up to each size in turn (embedded inserts the bulk, the server the
    last `SAMPLE`) and measure it there in both modes; then choose the text searches' depth
    as the end of a build does, and sweep the collection's ef_search (embedded)."""
    settings = _settings(workdir)
    started = time.perf_counter()
    points: list[Point] = []
    tuned: list[Tuned] = []
    filled = 0
    embedded = EmbeddedChroma(settings, photo)
    try:
        for size in sizes:
            bulk = _insert(embedded, base, filled, size - SAMPLE)
            embedded.close()
            served = _served(settings, photo, (base, size), truth, workdir)
            served = replace(served, elapsed_s=round(time.perf_counter() - started))
            embedded = EmbeddedChroma(settings, photo)
            phase = Phase("embedded", size, bulk, embedded.load())
            point = measure_point(phase, embedded, embedded.pid, settings, truth, workdir)
            tuned.append(tuned_of(size, embedded.tune(captions(base, size), TARGET)))
            embedded, swept = _ef_sweep(embedded, settings, photo, truth, size)
            point = replace(point, ef_search=swept, elapsed_s=round(time.perf_counter() - started))
            points += [replace(p, text_depth=tuned[-1].depth) for p in (point, served)]
            log.info("%s %s", points[-2:], tuned[-1])
            _save_so_far(points)
            filled = size
    finally:
        embedded.close()
    return points, tuned


def _served(
    settings, photo: Path, grown: tuple[np.ndarray, int], truth: Truth, workdir: Path
) -> Point:
    """The server's turn at a size (`grown`: the base vectors and the size): it inserts the
    size's last `SAMPLE` vectors, then is measured."""
    base, size = grown
    log_path = settings.chroma_path.parent / "server.log"
    with running_chroma(settings.chroma_path, log_path, start_timeout_s=120) as server:
        remote = settings.model_copy(
            update={"chroma_host": "127.0.0.1", "chroma_port": server.port}
        )
        side = Filler(remote, photo)
        load_s = side.load()
        phase = Phase("server", size, _insert(side, base, size - SAMPLE, size), load_s)
        return measure_point(phase, side, server.pid, remote, truth, workdir)


def _ef_sweep(
    embedded: EmbeddedChroma, settings, photo: Path, truth: Truth, size: int
) -> tuple[EmbeddedChroma, tuple[Effort, ...]]:
    """Recall and query times at each `EF_SEARCH` as the collection's ef_search, at the
    store's own depth. Chroma applies a new ef_search only when it loads the index, so the
    store is reopened for each; the project's value is restored at the end."""
    found = {}
    for ef in (*EF_SEARCH, _project_hnsw()["ef_search"]):
        embedded.set_ef_search(ef)
        embedded.close()
        embedded = EmbeddedChroma(settings, photo)
        if len(found) == len(EF_SEARCH):
            break  # restored
        embedded.load()
        embedded.sweep({kind: q[:WARM_UP] for kind, q in truth.queries.items()}, (0,))
        found[ef] = embedded.sweep(truth.queries, (0,))[0]
    return embedded, efforts(found, truth.exact[size])


def _by_name(points: list[Point]) -> dict[str, dict]:
    """Every point under "<mode>_<vectors>" (a dict: the summary keeps only the headlines)."""
    return {f"{p.mode}_{p.vectors}": asdict(p) for p in points}


def _save_so_far(points: list[Point]) -> None:
    """Write the sizes measured so far: a run stopped before the end (the full one takes
    long on a small machine) keeps them. run_all.py overwrites this file at the end."""
    write_json(
        "scale",
        {
            "machine": machine(),
            "date": datetime.date.today().isoformat(),
            "partial": True,
            "points": _by_name(points),
        },
    )


def _insert(side: Filler | EmbeddedChroma, base: np.ndarray, start: int, stop: int) -> Inserted:
    """Insert base vectors `start` → `stop` in batches of `BATCH`."""
    timed = []  # (vectors, seconds) of each batch
    for first in range(start, stop, BATCH):
        last = min(first + BATCH, stop)
        timed.append((last - first, side.add(first, base[first:last])))
        log.info("%d vectors in", last)
    seconds = sum(s for _, s in timed)
    return Inserted(start, stop, seconds, tuple(round(n / s) for n, s in timed))


def measure_point(
    phase: Phase,
    side: Filler | EmbeddedChroma,
    pid: int,
    settings,
    truth: Truth,
    workdir: Path,
) -> Point:
    """Queries at each search depth and their recall, memory and disk, then start-up: status
    and the bot."""
    side.sweep({kind: q[:WARM_UP] for kind, q in truth.queries.items()}, depths())
    swept = efforts(side.sweep(truth.queries, depths()), truth.exact[phase.size])
    default = at(swept, 0)
    memory = (rss_mb(pid), peak_rss_mb(pid))
    status = status_seconds(settings, workdir)
    inserted = phase.inserted
    return Point(
        mode=phase.mode,
        vectors=phase.size,
        inserted_from=inserted.start,
        inserted_to=inserted.stop,
        insert_per_s=round((inserted.stop - inserted.start) / inserted.seconds),
        insert_per_s_by_batch=inserted.per_batch,
        load_s=round(phase.load_s, 2),
        elapsed_s=0.0,
        image_query=default.image_query,
        text_query=default.text_query,
        recall_image=default.recall_image,
        recall_text_default=default.recall_text,
        chroma_rss_mb=round(memory[0]),
        chroma_peak_rss_mb=round(memory[1]),
        disk_mb=round(du_mb(Path(settings.chroma_path))),
        status_s=round(status[0], 3),
        status_process_s=round(status[1], 2),
        bot=bot_start(settings, workdir, f"{phase.mode}-{phase.size}"),
        depths=swept,
    )


STATUS = (
    "import sys, time\n"
    "from core.__main__ import main\n"
    "started = time.perf_counter()\n"
    "code = main(['status'])\n"
    "print(f'answered in {time.perf_counter() - started:.4f} s')\n"
    "sys.exit(code)\n"
)
"""`python -m core status`, timed inside the process after its imports."""


def status_seconds(settings, workdir: Path) -> tuple[float, float]:
    """`python -m core status` against the collection: (seconds from its imports done to the
    answer printed, wall seconds of the whole process)."""
    code, output, wall, _ = run_measured(
        [sys.executable, "-c", STATUS], subprocess_env(settings), workdir
    )
    if code != 0:
        raise RuntimeError(f"python -m core status failed: {output}")
    answered = output.rpartition("answered in ")[2].split()[0]
    return float(answered), wall


def bot_start(settings, workdir: Path, label: str) -> BotStart:
    """Start `python -m bot` against the collection, then send it one text search."""
    from tests.fake_telegram import FakeTelegram

    bot_settings = settings.model_copy(
        update={
            "clip_model": str(vit_b32_dir().path),
            "telegram_bot_token": "123456:TEST",
            "rate_limit_per_minute": 0,
            "vqa_enabled": False,
            "dtype": "float32",
        }
    )
    with FakeTelegram() as tg:
        started = time.perf_counter()
        proc = start_bot(
            subprocess_env(bot_settings, **tg.env()), workdir, workdir / f"bot-{label}.log"
        )
        try:
            start_s = time.perf_counter() - started
            start_rss = peak_rss_mb(proc.pid)
            asked = time.perf_counter()
            tg.inject_text("a dog on a beach", user_id=5000)
            tg.wait_sent(5000, 1, timeout=600)
            first_search = time.perf_counter() - asked
            after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    return BotStart(round(start_s, 1), round(start_rss), round(first_search, 1), round(after))


def du_mb(path: Path) -> float:
    """Disk space used under `path` (allocated blocks, as `du`), in MB."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total / 2**20


def draw(size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Image-like and text-like queries, and `size` base vectors, from one CLIP-like space
    (drawn in batches: a million vectors need only one batch of scratch memory)."""
    base = np.empty((QUERIES + size, DIM), dtype=np.float32)
    start = 0
    for batch in clip_like_batches(QUERIES + size, BATCH, dim=DIM):
        base[start : start + len(batch)] = batch
        start += len(batch)
    images = base[:QUERIES].copy()
    return {"image": images, "text": text_like(images)}, base[QUERIES:]


def _settings(workdir: Path):
    """The collection is labelled with the bench's ViT-B/32 (random weights), so the bot and
    `core status` open it as theirs; the vectors are CLIP-like, not made by that model."""
    return bench_settings(workdir, vit_b32_dir().path, collection=COLLECTION)


def measure(quick: bool, workdir: Path) -> Scale:
    """Draw the vectors and their exact answers, then grow the collection size by size."""
    sizes = QUICK_SIZES if quick else SIZES
    photo = make_photos(workdir.parent / "photos", 1)[0].resolve()
    queries, base = draw(sizes[-1])
    exact = {
        size: {kind: exact_top_k(base[:size], vectors, 10) for kind, vectors in queries.items()}
        for size in sizes
    }
    return Scale(sizes, *grow(sizes, base, Truth(queries, exact), workdir, photo))


def _cost_table(points: list[Point]) -> str:
    hnsw = _project_hnsw()
    return table(
        f"Cost curve: CLIP-like 512-d vectors with COCO-like metadata, HNSW "
        f"M={hnsw['max_neighbors']}, ef_construction={hnsw['ef_construction']}, "
        f"ef_search={hnsw['ef_search']}, {QUERIES} queries of each kind, top-10 with metadata",
        [
            "vectors",
            "mode",
            "insert/s (over)",
            "image query p50 / p95 ms",
            "text-like p50 / p95 ms",
            "recall@10 image / text-like",
            "Chroma RSS / peak MB",
            "disk MB",
            "elapsed min",
        ],
        [
            [
                f"{p.vectors:,}",
                p.mode,
                f"{p.insert_per_s} ({p.inserted_from // 1000}k→{p.inserted_to // 1000}k)",
                f"{p.image_query.p50_ms} / {p.image_query.p95_ms}",
                f"{p.text_query.p50_ms} / {p.text_query.p95_ms}",
                f"{p.recall_image:.3f} / {p.recall_text_default:.3f}",
                f"{p.chroma_rss_mb:,} / {p.chroma_peak_rss_mb:,}",
                f"{p.disk_mb:,}",
                round(p.elapsed_s / 60, 1),
            ]
            for p in points
        ],
    )


def _startup_table(points: list[Point]) -> str:
    return table(
        "Start-up at scale: opening the collection, `python -m core status`, and `python -m bot` "
        "(ViT-B/32 float32, BLIP-2 off) against it",
        [
            "vectors",
            "mode",
            "Chroma's first access s",
            "core status: answer s (whole process s)",
            "bot start s",
            "bot RSS at start MB",
            "bot first search s",
            "bot RSS after it MB",
        ],
        [
            [
                f"{p.vectors:,}",
                p.mode,
                p.load_s,
                f"{p.status_s} ({p.status_process_s})",
                p.bot.start_s,
                f"{p.bot.start_rss_mb:,}",
                p.bot.first_search_s,
                f"{p.bot.rss_after_search_mb:,}",
            ]
            for p in points
        ],
    )


def _project_hnsw() -> dict:
    from core.store.database import HNSW

    return dict(HNSW)
