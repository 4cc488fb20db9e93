"""A collection's size and recorded model, read the cheapest way and without chromadb: an
embedded store's SQLite file, or a server's HTTP API.

Embedded Chroma loads a collection's whole HNSW index on its first read, `count()` included,
which takes seconds and gigabytes for a large collection (bench/scale.py measures it; see
docs/benchmarks.md). Neither `python -m core status` nor the bot's start-up should pay that,
nor (status) the cost of importing chromadb. Chroma's SQLite file holds the same numbers
once its write log is applied, and a server answers two GETs. Everything here is read-only
and answers None whenever the answer cannot be trusted (a write in progress, a missing file,
another Chroma version's layout, a server that refuses, redirects or answers nonsense): the
caller then asks Chroma itself, which says clearly what is wrong.

`auth_headers` is where both this module and the store get CHROMA_AUTH_TOKEN's header, so it
is also where a token about to travel unencrypted to another machine is warned about.

`BuildRecord` is what a build writes into its collection's metadata: which source it was
building and whether it finished, so that `python -m core status` (and `make run` through it)
can tell an index whose first build was interrupted from a complete one. The build's
`SearchEffort` (core.store.effort: the text recall it measured) is read here too.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import sqlite3
import ssl
from collections.abc import Mapping
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from core.config import Settings
from core.json_files import json_object
from core.store.effort import EFFORT_KEY, SearchEffort

log = logging.getLogger(__name__)

FILE = "chroma.sqlite3"
DEFAULT_TENANT = "default_tenant"
DEFAULT_DATABASE = "default_database"
TIMEOUT_S = 10.0
MAX_BODY = 1024 * 1024
"""Bytes read of a server's answer at most: a collection's description is a few kilobytes."""


BUILD_KEY_PREFIX = "build:"
"""Collection metadata keys of `BuildRecord`s: one per source and shard."""
MAX_BUILDS = 64
"""Build records read at most (each source and shard has one): the store is not trusted."""
MAX_BUILD_RECORD = 4096
"""Characters of one record's JSON at most."""


@dataclass(frozen=True)
class BuildRecord:
    """What the last build of one source (one shard of it) set out to do and whether it got
    there, recorded in the collection's metadata before its first change and again at its
    end. Interrupted (Ctrl-C, kill, power cut, an error), it stays `complete` False, and
    status says so until a rerun finishes it.

    Read from the store, it is a hint and nothing more: at worst a wrong one makes `make run`
    run the (incremental, idempotent) builder once more, or not."""

    source: str
    """The source as the build described it: "COCO2014 val2014 in /data/coco"."""
    target: int
    """How many of the source's pictures the collection holds once the build is done."""
    others: int
    """How many records of other sources or shards the collection held when it started: the
    collection's count minus these is about how far this build got."""
    complete: bool

    @property
    def key(self) -> str:
        """Its metadata key: one per source, whatever its description's length."""
        return BUILD_KEY_PREFIX + hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def to_metadata(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_metadata(cls, value: object) -> BuildRecord | None:
        """The record a metadata value holds, or None when it is not one (checked field by
        field: the store is not trusted)."""
        data = json_object(value, MAX_BUILD_RECORD)
        if data is None:
            return None
        source, target, others = data.get("source"), data.get("target"), data.get("others")
        complete = data.get("complete")
        if not (isinstance(source, str) and type(complete) is bool):
            return None
        if not all(type(n) is int and n >= 0 for n in (target, others)):
            return None
        return cls(" ".join(source.split()), target, others, complete)

    def done(self, count: int) -> int:
        """About how many of the source's pictures a collection of `count` records holds."""
        return max(0, min(self.target, count - self.others))


def build_records(metadata: Mapping[str, object]) -> tuple[BuildRecord, ...]:
    """The `BuildRecord`s of a collection's metadata (at most `MAX_BUILDS`, by source)."""
    keys = sorted(k for k in metadata if isinstance(k, str) and k.startswith(BUILD_KEY_PREFIX))
    records = (BuildRecord.from_metadata(metadata[key]) for key in keys[:MAX_BUILDS])
    return tuple(sorted((r for r in records if r is not None), key=lambda r: r.source))


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection holds, read without loading any model."""

    name: str
    count: int
    model: str | None
    dim: int | None
    builds: tuple[BuildRecord, ...] = ()
    """The last build of each source, as recorded (none for an index built before they
    were recorded)."""
    effort: SearchEffort | None = None
    """How deep text searches go and the recall the last build measured there (None: not
    measured, or a malformed record)."""

    @property
    def incomplete(self) -> tuple[BuildRecord, ...]:
        """The builds that did not finish."""
        return tuple(build for build in self.builds if not build.complete)


def describe(settings: Settings) -> str:
    """Where the store is, for people: "embedded Chroma in data/chroma"."""
    if settings.chroma_host:
        scheme = "https" if settings.chroma_ssl else "http"
        return f"Chroma server {scheme}://{settings.chroma_host}:{settings.chroma_port}"
    return f"embedded Chroma in {settings.chroma_path}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """The header that carries CHROMA_AUTH_TOKEN: `Authorization: Bearer <token>` by default
    (what a reverse proxy in front of the open-source server checks), else the bare token."""
    if settings.chroma_auth_token is None:
        return {}
    if token_in_clear(settings):
        _warn_token_in_clear(describe(settings))
    token = settings.chroma_auth_token.get_secret_value()
    header = settings.chroma_auth_header
    return {header: f"Bearer {token}" if header.lower() == "authorization" else token}


def token_in_clear(settings: Settings) -> bool:
    """Whether CHROMA_AUTH_TOKEN would travel over plain HTTP (CHROMA_SSL off) to another
    machine (CHROMA_HOST not a loopback address): anyone on the way could read it."""
    return (
        settings.chroma_auth_token is not None
        and bool(settings.chroma_host)
        and not settings.chroma_ssl
        and not is_loopback(settings.chroma_host or "")
    )


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (a name other than localhost counts as remote: what it
    resolves to may change)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.cache
def _warn_token_in_clear(where: str) -> None:
    """Warn once per process (and server) that the token travels unencrypted."""
    log.warning(
        "CHROMA_AUTH_TOKEN is sent to %s over plain HTTP: anyone on the network path can read "
        "it; set CHROMA_SSL=true (TLS at the server or at a proxy in front of it)",
        where,
    )


def quick_info(settings: Settings, name: str) -> CollectionInfo | None:
    """Size and model of collection `name` in the configured store, or None (ask Chroma)."""
    if settings.chroma_host:
        return server_info(settings, name)
    return embedded_info(settings.chroma_path, name)


# --- an embedded store: Chroma 1.x's SQLite file -------------------------------------------


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
    rows = _read_rows(path, _RECORDS_SQL, {"collection": str(found[0])}, MAX_BUILDS + 1)
    return _info(name, count, found[1], found[2], dict(rows))


def _info(
    name: str, count: int, model: object, dim: object, metadata: Mapping[str, object]
) -> CollectionInfo:
    """The recorded model and dimension as read from a file or a server, each kept only when
    it has the type the project records (a string, an integer), else None; and the records
    of `metadata` (builds, search effort), each kept only when well-formed."""
    return CollectionInfo(
        name,
        count,
        model if isinstance(model, str) else None,
        dim if type(dim) is int else None,
        build_records(metadata),
        SearchEffort.from_metadata(metadata),
    )


def _read(path: Path, sql: str, parameters: dict[str, str]) -> tuple | None:
    """The first row of `sql`, or None (no row, no file, or not the layout known here)."""
    rows = _read_rows(path, sql, parameters, 1)
    return rows[0] if rows else None


def _read_rows(path: Path, sql: str, parameters: dict[str, str], most: int) -> list[tuple]:
    """The first `most` rows of `sql`; none when there is no file or not the layout known
    here."""
    uri = f"{(path / FILE).resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return db.execute(sql, parameters).fetchmany(most)
    except sqlite3.Error:
        return []


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

_RECORDS_SQL = f"""
SELECT key, str_value FROM collection_metadata
WHERE collection_id = :collection
  AND (key = '{EFFORT_KEY}' OR key LIKE '{BUILD_KEY_PREFIX}%')
ORDER BY key = '{EFFORT_KEY}' DESC, key
"""
"""(key, value) of a collection's search effort (first) and build records."""


# --- a server: Chroma's v2 HTTP API --------------------------------------------------------


def server_info(settings: Settings, name: str) -> CollectionInfo | None:
    """Size and recorded model of collection `name` on the configured server, from two GETs
    to that host and port only (no redirect is followed, no proxy used), or None."""
    collections = f"/api/v2/tenants/{DEFAULT_TENANT}/databases/{DEFAULT_DATABASE}/collections"
    collection = _get_json(settings, f"{collections}/{quote(name, safe='')}")
    if not isinstance(collection, dict) or not isinstance(collection.get("id"), str):
        return None
    count = _get_json(settings, f"{collections}/{quote(collection['id'], safe='')}/count")
    if type(count) is not int or count < 0:
        return None
    metadata = collection.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return _info(name, count, metadata.get("model"), metadata.get("dim"), metadata)


def _get_json(settings: Settings, path: str) -> object | None:
    """The JSON a 200 answer to GET `path` carries, or None."""
    assert settings.chroma_host
    if settings.chroma_ssl:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            settings.chroma_host,
            settings.chroma_port,
            timeout=TIMEOUT_S,
            context=ssl.create_default_context(),
        )
    else:
        connection = http.client.HTTPConnection(
            settings.chroma_host, settings.chroma_port, timeout=TIMEOUT_S
        )
    headers = {"Accept": "application/json", **auth_headers(settings)}
    try:
        with closing(connection):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                return None
            body = response.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if len(body) > MAX_BODY:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
