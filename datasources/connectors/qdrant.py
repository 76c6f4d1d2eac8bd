"""Qdrant through `qdrant_client.QdrantClient`: a server URL, or a folder path for local mode.

Points follow the Milvus layout so the pipeline never asks which store it has: one named vector
`_vector`, and a payload of `_key` (the source's primary key as `encode_key` made it, or a chunk's
"<row key>#<n>"), `_text`, `_text_hash`, `_row_key`/`_chunk` for chunked tasks, and one entry per
payload column.

Point ids: Qdrant accepts only unsigned integers and UUIDs. Unsigned integer keys are used as they
are; every other key (negative integers, strings, composite keys) becomes
uuid5(KEY_NAMESPACE, "<type>:<key>"), so the same key always lands on the same point and replays
overwrite instead of duplicating. The original key stays in the payload, which is what fetch,
iterate and search hand back.

Local mode is qdrant-client's embedded engine. It locks its folder for one process and it is not
thread-safe, while the runner calls the target from two threads (fetch while embedding, upsert in
the writer). So within a process every QdrantTarget on a folder shares one client and one lock,
and a second process is told plainly to run a server instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .base import CheckResult, Column, ConnectorError, Unavailable
from .milvus import KEY_FIELD, RESERVED_FIELDS, ROW_KEY_FIELD, TEXT_FIELD, VECTOR_FIELD, CollectionSpec

logger = logging.getLogger(__name__)
# We create payload indexes in local mode too (same code path as a server); local mode ignores
# them and says so once per process, which is noise in a runner's log.
warnings.filterwarnings("ignore", message="Payload indexes have no effect in the local Qdrant", category=UserWarning)

# Never change: the ids of points already stored are derived from it.
KEY_NAMESPACE = uuid.UUID("9b3fd53a-7219-4b10-bacb-85388a866a00")
MAX_POINT_INT = 2**64 - 1
READ_BATCH = 1000
# Points per request: even 64 points of the longest text (65,535 characters, up to 6 bytes each as
# escaped JSON) and 3,072-dimensional vectors stay under a server's 32 MB default request limit.
WRITE_BATCH = 64
LOCAL_OPEN_WAIT = 5.0  # a web request or a check holds a local folder for a moment only
DISTANCES = {"COSINE": "Cosine", "L2": "Euclid", "IP": "Dot"}
# Free text and documents are what the embedding is for; an exact-match index on them costs memory
# and serves no filter.
UNINDEXED_TYPES = {
    "json", "jsonb", "text", "mediumtext", "longtext", "blob", "mediumblob", "longblob", "bytea",
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def point_id(key: int | str) -> int | str:
    """The Qdrant point id of a `_key`: the key itself when Qdrant takes it, else a uuid5."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= MAX_POINT_INT:
        return key
    return str(uuid.uuid5(KEY_NAMESPACE, f"{type(key).__name__}:{key}"))


def local_folder(uri: str) -> str | None:
    """The folder of a local-mode store, or None when `uri` names a server."""
    uri = uri.strip()
    match = _SCHEME.match(uri)
    if match:
        scheme = match.group(1).lower()
        if scheme in {"http", "https"}:
            return None
        if scheme != "file":
            raise ConnectorError(
                f"Qdrant URI {uri!r}: use http(s)://host:port for a server or a folder path for local mode."
            )
        uri = uri[len("file://"):]
    path = os.path.expanduser(uri)
    if not os.path.isabs(path):
        # A relative folder resolves against each process's working directory, so the web
        # process and the workers would quietly use different data.
        raise ConnectorError(
            f"Qdrant URI {uri!r} is neither a URL nor an absolute folder path: "
            "use http(s)://host:6333 for a server or an absolute path for local mode."
        )
    return os.path.realpath(path)


def payload_index_schemas(spec: CollectionSpec) -> dict[str, str]:
    """Which payload fields get an index, and of which type (`PayloadSchemaType` values)."""
    schemas = {KEY_FIELD: "integer" if _integer_keys(spec) else "keyword"}
    if spec.chunked:  # fetch_rows and delete_rows select a row's chunks by it
        schemas[ROW_KEY_FIELD] = "keyword"
    for column in spec.payload_columns:
        schema = _index_schema(column)
        if schema:
            schemas[column.name] = schema
    return schemas


def _integer_keys(spec: CollectionSpec) -> bool:
    return spec.key_is_integer and not spec.chunked  # a chunk's key is "<row key>#<n>"


def _index_schema(column: Column) -> str | None:
    if column.is_integer:
        return "integer"
    if column.is_float:
        return "float"
    if column.data_type in UNINDEXED_TYPES:
        return None
    # Everything else is stored as a string (varchar, enum, dates, decimals): exact-match filters.
    return "keyword"


# -- local mode: one client per folder and process ---------------------------------------------


@dataclass
class _LocalFolder:
    client: Any
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: int = 0


_folders: dict[str, _LocalFolder] = {}
_folders_guard = threading.Lock()


def _forget_folders_in_child() -> None:
    # A forked child inherits the parent's clients but is another process: it must open a folder
    # (and be refused while the parent holds it) on its own.
    global _folders_guard
    _folders.clear()
    _folders_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_folders_in_child)


def open_in_this_process(folder: str) -> bool:
    """Whether a target of this process holds the local folder (more targets then share it)."""
    with _folders_guard:
        return folder in _folders


def in_use_message(folder: str) -> str:
    return (
        f"Qdrant local folder {folder} is already in use by another process; run a Qdrant server "
        "for several processes (web + workers)."
    )


def _folder_is_free(folder: str) -> bool:
    """Whether no process holds the folder, asked without loading it.

    qdrant-client loads every collection before it tries the folder lock, which is slow for a big
    folder and leaves its SQLite files open when it then fails; probing the same lock first avoids
    both. It is a hint only: opening can still lose a race, and then says the same thing.
    """
    import portalocker  # imported late, as qdrant-client does: it probes writable folders on import

    lock_path = os.path.join(folder, ".lock")
    if not os.path.exists(lock_path):
        return True
    with open(lock_path, "r+") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            return False
        portalocker.unlock(handle)
    return True


def _open_local(folder: str, wait: float) -> Any:
    from qdrant_client import QdrantClient

    deadline = time.monotonic() + wait
    while True:
        if _folder_is_free(folder):
            try:
                # Disabling SQLite's same-thread check is safe only because every call on this
                # client holds the folder's lock (see QdrantTarget._call).
                return QdrantClient(path=folder, force_disable_check_same_thread=True)
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise ConnectorError(f"Qdrant local folder {folder}: {exc}") from None
        if time.monotonic() >= deadline:
            raise ConnectorError(in_use_message(folder))
        time.sleep(0.2)


def _acquire_local(folder: str, wait: float) -> _LocalFolder:
    with _folders_guard:
        shared = _folders.get(folder)
        if shared is None:
            shared = _LocalFolder(client=_open_local(folder, wait))
            _folders[folder] = shared
        shared.users += 1
        return shared


def _release_local(folder: str, shared: _LocalFolder) -> None:
    with _folders_guard:
        shared.users -= 1
        if shared.users > 0 or _folders.get(folder) is not shared:
            return
        del _folders[folder]
        # Closing releases the folder lock, so another process (a restarted runner) can open it.
        with shared.lock:
            try:
                shared.client.close()
            except Exception:
                logger.debug("closing the Qdrant local client failed", exc_info=True)


# -- the target --------------------------------------------------------------------------------


class QdrantTarget:
    LABEL = "Qdrant"
    # What a task may choose for this store (tasks.validation checks the task against these).
    INDEX_TYPES = ("AUTOINDEX", "HNSW")
    METRICS = tuple(DISTANCES)
    # The point layout is the Milvus one (see the module docstring): the same names are taken.
    RESERVED_FIELDS = frozenset(RESERVED_FIELDS)

    @staticmethod
    def payload_name_problem(name: str) -> str | None:
        """Why a payload column cannot be a payload key, or None."""
        if any(c in name for c in ".[]"):
            # Filters and payload indexes read "a.b" and "a[]" as paths into nested values, so the
            # index made for such a column would index something else.
            return (f"{name!r} cannot be a Qdrant payload key: Qdrant reads '.' and '[]' as paths into "
                    "nested values (rename the column in a view).")
        return None

    def __init__(
        self, *, uri: str, token: str = "", timeout: float = 30.0, local_wait: float = LOCAL_OPEN_WAIT
    ) -> None:
        self.uri, self.token, self.timeout, self.local_wait = uri.strip(), token, timeout, local_wait
        self.folder: str | None = None
        self._uri_error: ConnectorError | None = None
        try:
            self.folder = local_folder(self.uri)
        except ConnectorError as exc:  # reported on first use, so check() can show it
            self._uri_error = exc
        self._client = None
        self._shared: _LocalFolder | None = None
        self._lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        # Two threads opening at once would take the shared folder twice and never let it go.
        self._opening = threading.Lock()

    @classmethod
    def from_model(cls, store) -> QdrantTarget:
        return cls(uri=store.uri, token=store.get_token())

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    @property
    def where(self) -> str:
        return f"Qdrant local folder {self.folder}" if self.is_local else f"Qdrant at {self.uri}"

    @property
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._opening:
            if self._client is None:
                self._open()
        return self._client

    def _open(self) -> None:
        if self._uri_error is not None:
            raise self._uri_error
        if self.folder is not None:
            self._shared = _acquire_local(self.folder, self.local_wait)
            self._lock = self._shared.lock
            self._client = self._shared.client
            return
        from qdrant_client import QdrantClient

        try:
            # No version probe on construction: it is a round trip per target and only warns.
            self._client = QdrantClient(
                url=self.uri, api_key=str(self.token) or None, timeout=max(int(self.timeout), 1),
                check_compatibility=False,
            )
        except Exception as exc:
            raise self.explain(exc) from None

    def explain(self, exc: Exception) -> ConnectorError:
        import httpx
        from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, ResponseHandlingException) and isinstance(exc.source, httpx.TransportError):
            return Unavailable(f"Cannot reach Qdrant at {self.uri}: is the server running? ({exc.source})")
        if isinstance(exc, httpx.TransportError):
            return Unavailable(f"Cannot reach Qdrant at {self.uri}: is the server running? ({exc})")
        if isinstance(exc, ResourceExhaustedResponse):
            return Unavailable(f"Qdrant at {self.uri} is rate limiting: {exc}")
        if isinstance(exc, UnexpectedResponse):
            status = exc.status_code
            if status in (401, 403):
                return ConnectorError(f"Qdrant at {self.uri} refused the API key.")
            if status in (502, 503, 504):  # a proxy in front of a server that is down or starting
                return Unavailable(f"Qdrant at {self.uri} is not available right now (HTTP {status}).")
            return ConnectorError(f"Qdrant at {self.uri}: {_server_error(exc)}")
        return ConnectorError(f"{self.where}: {exc}")

    def _call(self, method: str, *args, **kwargs) -> Any:
        client = self.client
        with self._lock:
            try:
                return getattr(client, method)(*args, **kwargs)
            except ConnectorError:
                raise
            except Exception as exc:
                raise self.explain(exc) from exc

    def close(self) -> None:
        if self._shared is not None:
            shared, self._shared = self._shared, None
            self._client, self._lock = None, contextlib.nullcontext()
            _release_local(self.folder, shared)
        elif self._client is not None:
            try:
                self._client.close()
            except Exception:
                logger.debug("closing the Qdrant client failed", exc_info=True)
            self._client = None

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> list[CheckResult]:
        try:
            names = self.list_collections()
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        if self.is_local:
            message = (
                f"Opened Qdrant local folder {self.folder}; {len(names)} collections. Local mode admits one "
                "process: run a Qdrant server when the web console and workers both use this store."
            )
        else:
            message = f"Connected to Qdrant; {len(names)} collections."
        return [CheckResult("connect", True, message)]

    # -- collections -------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._call("get_collections").collections)

    def has_collection(self, name: str) -> bool:
        return bool(self._call("collection_exists", name))

    def ensure_collection(self, spec: CollectionSpec) -> bool:
        """Create the collection and its payload indexes if missing; return True when created."""
        from qdrant_client import models

        if self.has_collection(spec.name):
            self._verify(spec)
            self._create_payload_indexes(spec)  # idempotent: picks up a column added to the payload
            self._use_write_ahead_log(spec.name)  # synchronous is per connection: set on every open
            return False
        # Qdrant's optimizer builds the HNSW graph in the background once a segment grows past
        # its indexing_threshold, so a snapshot's rows are indexed in bulk after they are
        # written, as the design asks, with nothing for us to schedule; local mode searches
        # exactly and builds no graph. The parameters sit on the vector itself so that both a
        # server and local mode report them back (local mode drops a collection-wide hnsw_config).
        self._call(
            "create_collection", spec.name,
            vectors_config={VECTOR_FIELD: models.VectorParams(
                size=spec.dimension, distance=self._distance(spec), hnsw_config=self._hnsw(spec),
            )},
        )
        self._create_payload_indexes(spec)
        self._use_write_ahead_log(spec.name)
        return True

    def _use_write_ahead_log(self, name: str) -> None:
        """Switch a local collection's SQLite file to WAL journaling, keeping synchronous=FULL.

        Local mode commits (and syncs) one transaction per point. With the default rollback
        journal that measured 17-22 ms per point here, slower than a modest table's change rate;
        WAL with FULL sync still syncs every commit before the upsert returns (so an acknowledged
        write survives power loss, as the checkpoint assumes) and measured about 4 ms. The
        setting stays in the file. It reaches into qdrant-client's local storage, so when that
        layout changes it only logs and leaves the speed as it was.
        """
        if not self.is_local:
            return
        collection = getattr(getattr(self.client, "_client", None), "collections", {}).get(name)
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if not isinstance(connection, sqlite3.Connection):
            logger.debug("Qdrant local storage layout not recognised; journal mode left as it is")
            return
        with self._lock:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")

    def _distance(self, spec: CollectionSpec) -> Any:
        from qdrant_client import models

        try:
            return models.Distance(DISTANCES[spec.metric.upper()])
        except KeyError:
            raise ConnectorError(
                f"Qdrant has no metric {spec.metric!r}: use one of {', '.join(DISTANCES)}."
            ) from None

    @staticmethod
    def _hnsw(spec: CollectionSpec) -> Any:
        """The task's HNSW parameters; None (Qdrant's defaults) unless it chose HNSW."""
        from qdrant_client import models

        if spec.index.type != "HNSW":
            return None
        return models.HnswConfigDiff(m=spec.index.hnsw_m, ef_construct=spec.index.hnsw_ef_construction)

    def _create_payload_indexes(self, spec: CollectionSpec) -> None:
        from qdrant_client import models

        existing = self._call("get_collection", spec.name).payload_schema or {}
        for name, schema in payload_index_schemas(spec).items():
            if name not in existing:
                self._call(
                    "create_payload_index", spec.name, field_name=name,
                    field_schema=models.PayloadSchemaType(schema), wait=True,
                )

    def _verify(self, spec: CollectionSpec) -> None:
        info = self._call("get_collection", spec.name)
        vectors = info.config.params.vectors
        params = vectors.get(VECTOR_FIELD) if isinstance(vectors, dict) else None
        if params is None:
            raise ConnectorError(
                f"Collection {spec.name!r} exists but was not made by Data Rsync "
                f"(no {VECTOR_FIELD!r} vector): choose another collection name."
            )
        if params.size != spec.dimension:
            raise ConnectorError(
                f"Collection {spec.name!r} holds {params.size}-dimensional vectors but the model makes "
                f"{spec.dimension}: use a new collection for this model."
            )
        if params.distance != self._distance(spec):
            raise ConnectorError(
                f"Collection {spec.name!r} compares vectors by {params.distance.value} but the task asks for "
                f"{spec.metric}: use a new collection."
            )
        if spec.index.type == "HNSW":
            # The vector's own parameters, else the collection's (collections made before tasks
            # chose their index carry only those).
            own, shared = params.hnsw_config, info.config.hnsw_config
            have = tuple(
                getattr(own, key, None) if getattr(own, key, None) is not None else getattr(shared, key, None)
                for key in ("m", "ef_construct")
            )
            if have != (spec.index.hnsw_m, spec.index.hnsw_ef_construction):
                raise ConnectorError(
                    f"Collection {spec.name!r} is indexed with HNSW (M={have[0]}, ef_construction={have[1]}) by "
                    f"{spec.metric} but the task asks for {spec.index.describe()}: a different index needs a new "
                    "collection (change the collection name, or drop this one and take a new snapshot)."
                )
        # Integer and string keys map to different point ids, so mixing them would duplicate rows.
        points, _ = self._call("scroll", spec.name, limit=1, with_payload=[KEY_FIELD], with_vectors=False)
        if points and KEY_FIELD in (points[0].payload or {}):
            stored_integer = isinstance(points[0].payload[KEY_FIELD], int)
            if stored_integer != _integer_keys(spec):
                raise ConnectorError(
                    f"Collection {spec.name!r} holds {'integer' if stored_integer else 'text'} keys but the task now "
                    f"writes {'integer' if _integer_keys(spec) else 'text'} keys (a changed primary key or "
                    "chunking setting): re-snapshot into a new collection."
                )

    def drop_collection(self, name: str) -> None:
        if self.has_collection(name):
            self._call("delete_collection", name)

    # -- rows --------------------------------------------------------------------------------

    def upsert(self, name: str, rows: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        for start in range(0, len(rows), WRITE_BATCH):
            try:
                points = [
                    models.PointStruct(
                        id=point_id(row[KEY_FIELD]), vector={VECTOR_FIELD: list(row[VECTOR_FIELD])},
                        payload={k: v for k, v in row.items() if k != VECTOR_FIELD},
                    )
                    for row in rows[start : start + WRITE_BATCH]
                ]
            except Exception as exc:  # a row Qdrant cannot take: the pipeline isolates it
                raise ConnectorError(f"{self.where}: {exc}") from exc
            # wait=True: the runner commits its checkpoint after this returns, so it must mean applied.
            self._call("upsert", name, points=points, wait=True)

    def delete(self, name: str, keys: list[int | str]) -> None:
        from qdrant_client import models

        for start in range(0, len(keys), READ_BATCH):
            ids = [point_id(k) for k in keys[start : start + READ_BATCH]]
            self._call("delete", name, points_selector=models.PointIdsList(points=ids), wait=True)

    def delete_all(self, name: str, *, key_is_integer: bool) -> None:
        """Empty the collection in place (a TRUNCATE): config and indexes stay, searches find nothing.

        An empty filter matches every point; recreating the collection instead would make it vanish
        for a moment and lose its payload indexes.
        """
        from qdrant_client import models

        self._call("delete", name, points_selector=models.FilterSelector(filter=models.Filter()), wait=True)

    def fetch_rows(self, name: str, row_keys: list, fields: list[str]) -> dict:
        """Chunked collections: every stored chunk of the given rows, as {row key: {point key: row}}."""
        found: dict = {}
        originals = {str(k): k for k in row_keys}  # stored as text: hand back the caller's own keys
        for start in range(0, len(row_keys), READ_BATCH):
            selected = self._rows_filter([str(k) for k in row_keys[start : start + READ_BATCH]])
            offset = None
            while True:
                records, offset = self._call(
                    "scroll", name, scroll_filter=selected, limit=READ_BATCH, offset=offset,
                    **self._selection([ROW_KEY_FIELD, *fields]),
                )
                for record in records:
                    row = self._row(record, [ROW_KEY_FIELD, *fields])
                    if row is not None:
                        row_key = originals.get(row[ROW_KEY_FIELD], row[ROW_KEY_FIELD])
                        found.setdefault(row_key, {})[row[KEY_FIELD]] = row
                if offset is None:
                    break
        return found

    def delete_rows(self, name: str, row_keys: list[str]) -> None:
        """Chunked collections: delete every chunk of these rows."""
        from qdrant_client import models

        for start in range(0, len(row_keys), READ_BATCH):
            selected = self._rows_filter([str(k) for k in row_keys[start : start + READ_BATCH]])
            self._call("delete", name, points_selector=models.FilterSelector(filter=selected), wait=True)

    @staticmethod
    def _rows_filter(row_keys: list[str]) -> Any:
        from qdrant_client import models

        return models.Filter(must=[models.FieldCondition(key=ROW_KEY_FIELD, match=models.MatchAny(any=row_keys))])

    def fetch(self, name: str, keys: list[int | str], fields: list[str]) -> dict[int | str, dict]:
        found: dict[int | str, dict] = {}
        for start in range(0, len(keys), READ_BATCH):
            ids = [point_id(k) for k in keys[start : start + READ_BATCH]]
            records = self._call("retrieve", name, ids=ids, **self._selection(fields))
            for record in records:
                row = self._row(record, fields)
                if row is not None:
                    found[row[KEY_FIELD]] = row
        return found

    def count(self, name: str) -> int:
        return int(self._call("count", name, exact=True).count)

    def iterate(self, name: str, fields: list[str], batch_size: int = READ_BATCH) -> Iterator[dict]:
        """Every row of the collection, in batches (for verification and tests).

        The lock is held per page, not across yields, so a slow consumer never stalls the runner.
        """
        offset = None
        while True:
            records, offset = self._call(
                "scroll", name, limit=batch_size, offset=offset, **self._selection(fields)
            )
            for record in records:
                row = self._row(record, fields)
                if row is not None:
                    yield row
            if offset is None:
                return

    def search(self, name: str, vector: list[float], *, limit: int, fields: list[str]) -> list[dict]:
        wanted = [KEY_FIELD, TEXT_FIELD, *(f for f in fields if f != VECTOR_FIELD)]
        response = self._call(
            "query_points", name, query=list(vector), using=VECTOR_FIELD, limit=limit,
            with_payload=wanted, with_vectors=False,
        )
        hits = []
        for point in response.points:
            payload = point.payload or {}
            hits.append({"key": payload.get(KEY_FIELD, point.id), "score": float(point.score), **payload})
        return hits

    @staticmethod
    def _selection(fields: list[str]) -> dict[str, Any]:
        payload = [KEY_FIELD, *(f for f in fields if f != VECTOR_FIELD)]
        return {"with_payload": payload, "with_vectors": [VECTOR_FIELD] if VECTOR_FIELD in fields else False}

    @staticmethod
    def _row(record: Any, fields: list[str]) -> dict | None:
        payload = record.payload or {}
        if KEY_FIELD not in payload:  # not written by Data Rsync: it has no key to report
            return None
        row = {KEY_FIELD: payload[KEY_FIELD], **{f: payload.get(f) for f in fields if f != VECTOR_FIELD}}
        if VECTOR_FIELD in fields:
            vectors = record.vector or {}
            row[VECTOR_FIELD] = vectors.get(VECTOR_FIELD) if isinstance(vectors, dict) else vectors
        return row


def _server_error(exc: Any) -> str:
    """The server's own error text from an UnexpectedResponse, without the raw bytes dump."""
    import json

    try:
        return str(json.loads(exc.content)["status"]["error"])
    except Exception:
        return f"HTTP {exc.status_code} {exc.reason_phrase}".strip()
