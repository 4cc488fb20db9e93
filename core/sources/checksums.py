"""The digests the COCO2014 zips must have before `core.sources.coco_download` unpacks them.

By default the official zips' pinned sizes and MD5s (`OFFICIAL`). A mirror whose zips differ
is used with `COCO_CHECKSUMS=<file>`: lines as `sha256sum` or `md5sum` print them
(`<hex>  <path>` or `<hex> *<path>`; 32 hex digits are an MD5, 64 a SHA-256), paths relative
to COCO_BASE_URL (`zips/val2014.zip`, `annotations/annotations_trainval2014.zip`). Such a
file pins no sizes: the server's announced size bounds the download, the digest decides.
A bad file (unreadable, a malformed line, no line for a zip that is needed) is a
`ConfigError` naming the file, before anything is fetched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

HASH_CHUNK = 1 << 20
ALGORITHMS = {32: "md5", 64: "sha256"}
"""Which algorithm a hex digest of that length comes from."""
_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]+) [ *](?P<path>\S.*)")


@dataclass(frozen=True)
class Digest:
    """What one zip must be: its digest, and its size where that is pinned too."""

    algorithm: str
    """"md5" or "sha256" (a `hashlib` name)."""
    hexdigest: str
    """Lower-case hex."""
    size: int | None = None
    """Bytes, where pinned (the official zips); None: the server's announced size is used."""


# The official zips (https://cocodataset.org/#download): the MD5s are the ones public downloaders
# check, e.g. salesforce/LAVIS lavis/datasets/download_scripts/download_coco.py (train2014,
# val2014) and PaddlePaddle/PaddleNLP paddlenlp/datasets/coco_captions.py (annotations); each
# equals the S3 ETag of its single-part upload, and the sizes are the bucket's Content-Length.
OFFICIAL: dict[str, Digest] = {
    "zips/train2014.zip": Digest("md5", "0da8c0bd3d6becc4dcb32757491aca88", 13_510_573_713),
    "zips/val2014.zip": Digest("md5", "a3d79f5ed8d289b7a7554ce06a5782b3", 6_645_013_297),
    "annotations/annotations_trainval2014.zip": Digest(
        "md5", "0a379cfc70b0e71301e0f377548639bd", 252_872_794
    ),
}


def expected_digests(checksums: Path | None, paths: Iterable[str]) -> dict[str, Digest]:
    """The digest of each of `paths` (relative to COCO_BASE_URL): from the `checksums` file
    where one is set (COCO_CHECKSUMS), else the official ones. Raises `ConfigError` for a
    bad file or a path it has no line for."""
    if checksums is None:
        return {path: OFFICIAL[path] for path in paths}
    table = read_checksums(checksums)
    missing = [path for path in paths if path not in table]
    if missing:
        raise ConfigError(f"COCO_CHECKSUMS {checksums} has no line for {', '.join(missing)}")
    return {path: table[path] for path in paths}


def read_checksums(path: Path) -> dict[str, Digest]:
    """The digests of a `sha256sum`/`md5sum` style file, by path. Blank lines are skipped;
    anything else that is not `<hex digest>  <path>` is a `ConfigError` naming the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"COCO_CHECKSUMS {path} cannot be read: {err}") from None
    table: dict[str, Digest] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.rstrip())
        algorithm = ALGORITHMS.get(len(match["digest"])) if match else None
        if match is None or algorithm is None:
            raise ConfigError(
                f"COCO_CHECKSUMS {path} line {number} is not '<md5 or sha256 hex>  <path>' "
                "(as md5sum or sha256sum print it)"
            )
        name = match["path"].removeprefix("./")
        if name in table:
            raise ConfigError(f"COCO_CHECKSUMS {path} line {number}: {name} is listed twice")
        table[name] = Digest(algorithm, match["digest"].lower())
    return table


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the whole file at `path`."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
