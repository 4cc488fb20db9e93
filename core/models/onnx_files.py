"""The on-disk cache of exported ONNX towers: `<CHROMA_PATH>/onnx/<model>/<tower>-<runtime>-
<digest>.onnx` (a tower is "text" or "image", a runtime "onnx" or "onnx-int8").

Who uses it: `core.models.onnx_runtime` (ENCODER_RUNTIME) reads a tower from here, or has it
exported once (`core.models.onnx_export`) and written here. The digest names what made the
file: the model's name and a fingerprint of its weight files (`weights_fingerprint`), the
torch, onnxruntime and onnx versions and the opset; new weights or a new version export
again, and the file it replaces is removed.

The cache lies beside the index and is trusted no more than the builder's roots file
(`core.search.sendable_files`, the same check): a file is used only if it is a regular file
this user (or root) owns and only they may write, opened without following a link, and at
most `MAX_BYTES` (protobuf's limit: bigger towers stay on torch). What is checked is what
is loaded: onnxruntime gets the open file (`/proc/self/fd/N` on Linux; elsewhere its bytes,
at twice the memory). Files are written atomically (a temporary file, then a rename),
readable by this user only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from core.search.sendable_files import _roots_file_problem as file_problem

log = logging.getLogger(__name__)

DIRECTORY = "onnx"
MAX_BYTES = 2**31 - 1
"""The largest ONNX file read (bytes): a single protobuf cannot be larger."""
DIGEST_GLOB = "[0-9a-f]" * 16
"""A file name's digest, as a glob pattern ("text-onnx-*" would match "text-onnx-int8-...")."""
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.json")
"""The files of a checkpoint whose names, sizes and times make its fingerprint."""


class OnnxCache:
    """The exported towers of one model in `<root>/onnx/<model>-<hash of its name>/`, named
    by `digest` (what made them: `digest_of`)."""

    def __init__(self, root: Path, model_name: str, digest: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.rstrip("/\\")).strip("._")
        self.folder = root / DIRECTORY / f"{slug[-60:]}-{digest_of(model_name)[:8]}"
        self.digest = digest

    def path(self, tower: str, runtime: str) -> Path:
        return self.folder / f"{tower}-{runtime}-{self.digest}.onnx"

    @contextlib.contextmanager
    def opened(self, tower: str, runtime: str) -> Iterator[str | bytes | None]:
        """The cached file, opened and checked, as onnxruntime loads it (a path to the open
        file, or its bytes); None when there is none, or when it is not to be trusted (logged:
        it will be exported again)."""
        path = self.path(tower, runtime)
        try:
            fd = _open_trusted(path)
        except FileNotFoundError:
            fd = None
        except (OSError, ValueError) as err:
            why = getattr(err, "strerror", None) or str(err)
            log.warning("ONNX cache file %s is ignored (%s): exporting it again", path, why)
            fd = None
        try:
            yield _loadable(fd) if fd is not None else None
        finally:
            if fd is not None:
                os.close(fd)

    def write(self, tower: str, runtime: str, make: Callable[[Path], None]) -> Path:
        """Have `make` write the file to a temporary path beside it, then rename it into
        place (readable by this user only); the other digests of this tower and runtime
        are removed."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(tower, runtime)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=f".{target.stem}-", suffix=".part")
        os.close(fd)
        partial = Path(name)
        try:
            make(partial)
            os.chmod(partial, 0o600)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        for old in self.folder.glob(f"{tower}-{runtime}-{DIGEST_GLOB}.onnx"):
            if old != target:
                with contextlib.suppress(OSError):
                    old.unlink()
        return target


def digest_of(*parts: str) -> str:
    """A short digest of what made a file (names, versions, fingerprints)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def weights_fingerprint(model_name: str) -> str:
    """A fingerprint of a checkpoint's files (names, sizes, modification times, and where
    links lead: the hub's cache names its blobs by their hash), cheap enough for every start;
    "unknown" when its directory is not found."""
    model_dir = _model_dir(model_name)
    if model_dir is None:
        return "unknown"
    facts = []
    for pattern in WEIGHT_FILES:
        for path in sorted(model_dir.glob(pattern)):
            with contextlib.suppress(OSError):
                info = path.stat()
                facts.append(f"{path.name}:{path.resolve().name}:{info.st_size}:{info.st_mtime_ns}")
    return digest_of(*facts) if facts else "unknown"


def _model_dir(name: str) -> Path | None:
    """A local checkpoint's directory, or a hub checkpoint's snapshot in the local cache."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _open_trusted(path: Path) -> int:
    """`path` opened for reading; raises `ValueError` saying why it is not to be trusted."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        problem = file_problem(info)
        if problem is None and info.st_size > MAX_BYTES:
            problem = "it is too big"
        if problem:
            raise ValueError(problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _loadable(fd: int) -> str | bytes:
    """The open file as onnxruntime loads it: its /proc path (Linux), else its bytes."""
    proc = Path(f"/proc/self/fd/{fd}")
    if proc.exists():
        return str(proc)
    with os.fdopen(os.dup(fd), "rb") as handle:
        return handle.read(MAX_BYTES + 1)
