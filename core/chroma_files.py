"""An embedded Chroma's SQLite file, read directly: a collection's size and recorded model
without loading its index, and without importing chromadb.

Embedded Chroma loads a collection's whole HNSW index on its first read, `count()` included:
0.3 s and 0.4 GB at 100k vectors, 3 s and 2.6 GB at a million (bench/scale.py). Neither
`python -m core status` nor the bot's start-up should pay that (nor, for status, the
import of chromadb itself). The file holds the same numbers once Chroma's write log is
applied. Everything here is read-only, in Chroma 1.x's layout, and answers None whenever
the file cannot be trusted (a write in progress, a missing file, another Chroma version's
layout): the caller then asks Chroma.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

FILE = "chroma.sqlite3"
DEFAULT_TENANT = "default_tenant"
DEFAULT_DATABASE = "default_database"


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection holds, read without loading any model."""

    name: str
    count: int
    model: str | None
    dim: int | None


def describe(path: Path) -> str:
    """How people are told where an embedded store is."""
    return f"embedded Chroma in {path}"


def embedded_count(path: Path, collection_id: object) -> int | None:
    """The number of records of the collection `collection_id` stored in `path`, or None
    when the file cannot be trusted."""
    row = _read(path, _COUNT_SQL, {"collection": str(collection_id)})
    if row is None or row[1] is None or (row[2] is not None and row[2] > row[1]):
        return None
    return int(row[0])


def embedded_info(path: Path, name: str) -> CollectionInfo | None:
    """Size and recorded model of the collection `name` stored in `path` (Chroma's default
    tenant and database, the project's), or None when it is not there or the file cannot
    be trusted."""
    found = _read(path, _COLLECTION_SQL, {"name": name})
    if found is None:
        return None
    count = embedded_count(path, found[0])
    if count is None:
        return None
    dim = found[2]
    return CollectionInfo(name, count, found[1], None if dim is None else int(dim))


def _read(path: Path, sql: str, parameters: dict[str, str]) -> tuple | None:
    """The first row of `sql`, or None (no row, no file, or not the layout known here)."""
    uri = f"{(path / FILE).resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return db.execute(sql, parameters).fetchone()
    except sqlite3.Error:
        return None


_COUNT_SQL = """
SELECT
  (SELECT COUNT(*) FROM embeddings WHERE segment_id = segments.id),
  (SELECT seq_id FROM max_seq_id WHERE segment_id = segments.id),
  (SELECT MAX(seq_id) FROM embeddings_queue WHERE topic LIKE '%/' || :collection)
FROM segments
WHERE collection = :collection AND scope = 'METADATA'
"""
"""(records, last log entry applied, last log entry written) of a collection's metadata
segment."""

_COLLECTION_SQL = f"""
SELECT
  collections.id,
  (SELECT str_value FROM collection_metadata
   WHERE collection_id = collections.id AND key = 'model'),
  (SELECT int_value FROM collection_metadata
   WHERE collection_id = collections.id AND key = 'dim')
FROM collections
JOIN databases ON databases.id = collections.database_id
WHERE collections.name = :name
  AND databases.name = '{DEFAULT_DATABASE}' AND databases.tenant_id = '{DEFAULT_TENANT}'
"""
"""(id, recorded model, recorded dimension) of a collection."""
