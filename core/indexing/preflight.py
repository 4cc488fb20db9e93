"""Everything a build needs that can fail, checked in seconds before anything long starts: the
model (CLIP_MODEL: its local directory, or the Hugging Face cache, or one look-up on the hub;
no weights are loaded), the store (CHROMA_PATH writable and no other builder on it, or the
CHROMA_HOST server reachable and accepting CHROMA_AUTH_TOKEN), the source (the folder, the
list, COCO_BASE_URL answering for the zips still needed) and the disk (room for the
download and for the index). Each failure is one domain error that names the setting to fix.
`build_needed` says first whether a build is needed at all (`--if-needed`, `make run`).

Who uses it: index_builder.py, before any download or model load (and alone with
`--check`); `make run` runs the builder only after `python -m bot --check` has checked the
token. Without it, a first `make run` on a machine without hub access downloaded COCO's
6 GB and only then failed on the model.

No torch, transformers or (for an embedded store) chromadb is imported here: the checks
read files and ask servers, they never load what they check.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.errors import DatasetError, DownloadError, ModelUnavailable, StoreUnavailable
from core.indexing.lock import check_no_builder
from core.models.hub import ask_hub, hub_endpoint, hub_offline, in_hub_cache
from core.sources.coco import COCO_PICTURES, COCO_SPLITS
from core.sources.coco_download import CocoFile, RetryPolicy, disk_space_needed, plan_coco
from core.sources.shards import EVERYTHING, Shard
from core.sources.units import format_size, plural
from core.store.collection_info import describe, quick_info

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""A Hugging Face model's weights are in one of these (or the shards an index names)."""
BYTES_PER_PICTURE = 8_000
"""Disk an index takes per picture, generously: about 5 kB were measured with 512-d vectors
and COCO's five captions (Chroma's SQLite file and HNSW files together)."""
QUICK_RETRY = RetryPolicy(attempts=2, first_delay=1.0)
"""COCO_BASE_URL is asked twice at most before a build: a check takes seconds, not minutes."""


@dataclass(frozen=True)
class BuildSource:
    """What a build is about to read, as far as the checks need to know."""

    folder: Path | None = None
    urls: Path | None = None
    splits: tuple[str, ...] = COCO_SPLITS
    """COCO2014's splits, when neither `folder` nor `urls` is given."""
    download: bool = False
    """COCO2014 is downloaded first where it is missing."""
    limit: int | None = None
    shard: Shard = EVERYTHING

    def coco_pictures(self) -> int | None:
        """About how many pictures a COCO build stores (None for other sources)."""
        if self.folder is not None or self.urls is not None:
            return None
        pictures = sum(COCO_PICTURES[split] for split in self.splits) // self.shard.count
        return pictures if self.limit is None else min(pictures, self.limit)


@dataclass
class Checked:
    """What the checks found: one line per check, for `--check`, and the COCO download's plan
    (empty when nothing is to be fetched)."""

    lines: list[str] = field(default_factory=list)
    download: list[CocoFile] = field(default_factory=list)


def check_build(settings: Settings, source: BuildSource, *, wait: bool = False) -> Checked:
    """Check everything a build of `source` needs, quickest first; raise the first problem
    (`ModelUnavailable`, `StoreUnavailable`, `StoreBusy`, `DatasetError`, `DownloadError`,
    `ConfigError`), named by its setting. `wait`: another builder on the store is no problem
    (the build waits for it)."""
    checked = Checked()
    checked.lines.append(check_store(settings, wait=wait))
    downloading = source.download and source.folder is None and source.urls is None
    if not downloading:
        checked.lines.append(check_source(settings, source))
    checked.lines.append(check_model("CLIP_MODEL", settings.clip_model))
    if downloading:
        checked.download = plan_coco(settings, source.splits, retry=QUICK_RETRY)
        checked.lines.append(check_download(settings, checked.download))
    pictures = source.coco_pictures()
    if pictures is not None and not settings.chroma_host:
        checked.lines.append(check_index_space(settings.chroma_path, pictures))
    return checked


def build_needed(settings: Settings, source: str) -> str | None:
    """Why a build of `source` (as `core.indexing.build.source_name` says it) is needed, and
    what it will do: the collection is missing or empty ("...: building it"), or the last
    build of this very source did not finish ("...: finishing it"); None when the collection
    holds pictures and no unfinished build of `source`.

    `make run` builds only then (`index_builder.py --if-needed`): an index built from other
    pictures is left as it is, and a first build stopped half-way is finished. Read without
    chromadb where it can be (`core.store.collection_info`); raises `StoreUnavailable`."""
    info = quick_info(settings, settings.collection)
    if info is None:
        from core.store.database import Database  # here: it imports chromadb

        info = Database(settings).info(settings.collection)
    if info is None or info.count == 0:
        return f"collection {settings.collection!r} in {describe(settings)} is empty: building it"
    for build in info.incomplete:
        if build.source == source:
            done = f"{build.done(info.count):,} of {plural(build.target, 'picture')}"
            return f"the last build of {source} did not finish ({done}): finishing it"
    return None


# --- the model ---------------------------------------------------------------------------


def check_model(setting: str, name: str) -> str:
    """Where model `name` (the value of `setting`) will be loaded from, checked without
    loading it: a local directory with a config and weights, the local Hugging Face cache,
    or (unless HF_HUB_OFFLINE) the hub, asked once. Raises `ModelUnavailable`."""
    if _is_path(name):
        return _check_model_dir(setting, name)
    if in_hub_cache(name, ("config.json",)) and in_hub_cache(name, WEIGHT_FILES):
        return f"{setting} {name}: in the local Hugging Face cache"
    if hub_offline():
        raise ModelUnavailable(
            f"{setting}={name} is not (completely) in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set: download it once with `hf download {name}` on a machine "
            f"that reaches the hub, or point {setting} at a local copy"
        )
    return _check_on_hub(setting, name)


def _is_path(name: str) -> bool:
    """A local path rather than a hub id ("owner/name"): it exists, or looks like a path (as
    core.models.runtime decides when it loads)."""
    if Path(name).expanduser().exists() or Path(name).is_absolute():
        return True
    if name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    return name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _check_model_dir(setting: str, name: str) -> str:
    path = Path(name).expanduser()
    if not path.is_dir():
        problem = "which is not a directory" if path.exists() else "which does not exist"
    elif not (path / "config.json").is_file():
        problem = "which has no config.json (not a Hugging Face model directory)"
    elif not any((path / weights).is_file() for weights in WEIGHT_FILES):
        problem = f"which has no weights ({' or '.join(WEIGHT_FILES[::2])})"
    else:
        return f"{setting} {name}: a local model directory"
    raise ModelUnavailable(f"{setting} points to {name}, {problem}")


def _check_on_hub(setting: str, name: str) -> str:
    """One quick look-up of `name` on the hub, without retries."""
    answer = ask_hub(name)
    if answer.unreachable is not None:
        raise ModelUnavailable(
            f"{setting}={name} is not in the local Hugging Face cache and the hub at "
            f"{hub_endpoint()} cannot be reached ({answer.unreachable}): download it with "
            f"`hf download {name}` on a machine that reaches the hub, or point {setting} at a "
            "local directory"
        )
    if not answer.known:
        raise ModelUnavailable(
            f"{setting}={name}: there is no such model on the Hugging Face hub (or it is "
            f"private): check the name, or point {setting} at a local directory"
        )
    if answer.note:  # the hub answered: loading will say more
        return f"{setting} {name}: on the Hugging Face hub ({answer.note})"
    return f"{setting} {name}: on the Hugging Face hub (downloaded when the build starts)"


# --- the store ---------------------------------------------------------------------------


def check_store(settings: Settings, *, wait: bool = False) -> str:
    """The store a build writes to: a server that answers and accepts our token, or an
    embedded store's folder that can be written and that no other builder holds (unless
    the build will `wait` for it). Raises `StoreUnavailable` or `StoreBusy`."""
    where = describe(settings)
    if settings.chroma_host:
        from core.store.database import Database  # here: it imports chromadb

        try:
            Database(settings)  # its client asks the server for the default tenant
        except StoreUnavailable as err:
            if "CHROMA_AUTH_TOKEN" in str(err):
                raise
            raise StoreUnavailable(
                f"CHROMA_HOST={settings.chroma_host} CHROMA_PORT={settings.chroma_port}: {err}"
            ) from None
        return f"{where}: it answers"
    path = settings.chroma_path
    existing = _existing_parent(path)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise StoreUnavailable(
            f"CHROMA_PATH={path} cannot be written ({existing} is not a folder this user may "
            "write to): set CHROMA_PATH to a folder you own"
        )
    if not wait:
        check_no_builder(path)
    return f"{where}: writable"


def _existing_parent(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what a mkdir -p would create it in)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- the source and the disk -------------------------------------------------------------


def check_source(settings: Settings, source: BuildSource) -> str:
    """The folder or the list exists; for COCO (not downloaded: `check_download` then), its
    annotations do. Raises `DatasetError`."""
    if source.folder is not None:
        if not source.folder.expanduser().is_dir():
            raise DatasetError(f"folder {source.folder} not found")
        return f"folder {source.folder}: found"
    if source.urls is not None:
        if not source.urls.expanduser().is_file():
            raise DatasetError(f"URL list {source.urls} not found")
        return f"URL list {source.urls}: found"
    root = settings.coco_root
    for split in source.splits:
        captions = root / "annotations" / f"captions_{split}.json"
        if not captions.is_file():
            raise DatasetError(
                f"{captions} not found (COCO_ROOT={root}): download COCO2014 with --download, "
                "or set COCO_ROOT to where it is"
            )
    return f"COCO2014 {'+'.join(source.splits)} in {root}: found"


def check_download(settings: Settings, plan: Sequence[CocoFile]) -> str:
    """Room on COCO_ROOT's disk for `plan` (checked again when the download starts); raises
    `DownloadError`."""
    if not plan:
        return f"COCO2014 is in place in {settings.coco_root}: nothing to download"
    need = disk_space_needed(plan)
    free = shutil.disk_usage(_existing_parent(settings.coco_root)).free
    if need > free:
        raise DownloadError(
            f"not enough disk space for COCO2014 in COCO_ROOT={settings.coco_root}: need "
            f"{format_size(need)}, {format_size(free)} free"
        )
    fetch = sum(item.to_fetch for item in plan)
    return (
        f"COCO_BASE_URL {settings.coco_base_url}: answers; {plural(len(plan), 'file')} "
        f"({format_size(fetch)}) to download, {format_size(free)} free in {settings.coco_root}"
    )


def check_index_space(path: Path, pictures: int) -> str:
    """Room on CHROMA_PATH's disk for an index of `pictures` (less what the store in `path`
    takes already: a refresh of a built index needs little more); raises
    `StoreUnavailable`."""
    need = max(0, pictures * BYTES_PER_PICTURE - _size_of(path))
    free = shutil.disk_usage(_existing_parent(path)).free
    if need > free:
        raise StoreUnavailable(
            f"not enough disk space for the index in CHROMA_PATH={path}: about "
            f"{format_size(need)} more needed for {plural(pictures, 'picture')}, "
            f"{format_size(free)} free"
        )
    return f"CHROMA_PATH {path}: {format_size(free)} free (about {format_size(need)} needed)"


def _size_of(folder: Path) -> int:
    """Bytes the files under `folder` take (0 when there is none)."""
    try:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    except OSError:
        return 0
