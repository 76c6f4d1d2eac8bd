"""Milvus through `pymilvus.MilvusClient`: a server or cluster URI, or Milvus Lite's server process.

A collection written by Data Rsync has reserved fields `_key` (the source's primary key, typed like
it), `_vector`, `_text` (the rendered text) and `_text_hash` (to skip re-embedding unchanged text),
then one field per payload column, typed from the source catalog.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from .base import CheckResult, Column, ConnectorError, Unavailable

logger = logging.getLogger(__name__)
# Milvus Lite has no MVCC timestamp service; the iterator's fallback is fine but warns on every call.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

KEY_FIELD, VECTOR_FIELD, TEXT_FIELD, HASH_FIELD = "_key", "_vector", "_text", "_text_hash"
# Chunked tasks: each chunk is a point keyed "<row key>#<n>", with its row's key and number.
ROW_KEY_FIELD, CHUNK_FIELD = "_row_key", "_chunk"
RESERVED_FIELDS = {KEY_FIELD, VECTOR_FIELD, TEXT_FIELD, HASH_FIELD, ROW_KEY_FIELD, CHUNK_FIELD}
VARCHAR_MAX = 65535
READ_BATCH = 1000
# pymilvus pings every 10 s even on an idle channel. A gRPC server with default keepalive rules
# (Milvus Lite's) allows idle pings only every two hours and answers more with GOAWAY
# "too_many_pings", after which the shared channel can fail to reconnect. Ping only during calls,
# and no more often than the default server minimum (5 min); every call has its own deadline,
# which is what notices a dead server.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}


# Field names a Milvus server accepts (Milvus Lite is laxer; a server is what matters).
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class VectorIndex:
    """How the vector field is indexed: the task's choice, checked by `tasks.validation`.

    `type` is AUTOINDEX (the store picks: Milvus its AUTOINDEX, Qdrant HNSW with its defaults),
    HNSW or IVF_FLAT (Milvus only). `metric` uses Milvus' names; Qdrant's Cosine, Dot and Euclid
    are the same three. The HNSW and IVF parameters are used only by their own index type.
    """

    type: str = "AUTOINDEX"
    metric: str = "COSINE"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    ivf_nlist: int = 128

    def describe(self) -> str:
        """"HNSW (M=8, ef_construction=64) by IP", for messages."""
        params = {"HNSW": f" (M={self.hnsw_m}, ef_construction={self.hnsw_ef_construction})",
                  "IVF_FLAT": f" (nlist={self.ivf_nlist})"}.get(self.type, "")
        return f"{self.type}{params} by {self.metric}"


@dataclass(frozen=True)
class CollectionSpec:
    """What a task's collection looks like, derived from the task and the source catalog."""

    name: str
    key_is_integer: bool
    dimension: int
    payload_columns: list[Column]
    chunked: bool = False
    index: VectorIndex = VectorIndex()

    @property
    def metric(self) -> str:
        return self.index.metric


def chunk_key(row_key: int | str, number: int) -> str:
    return f"{row_key}#{number}"


def split_chunk_key(point_key: int | str) -> int | str:
    """The row key of a chunk's point key (as `encode_key` made it, int keys back to int)."""
    row, _, _ = str(point_key).rpartition("#")
    try:
        return int(row)
    except ValueError:
        return row


def _quote(value: str) -> str:
    return json.dumps(str(value))  # a double-quoted, escaped string literal for filter expressions


def encode_key(key: tuple, key_is_integer: bool) -> int | str:
    """The `_key` value for a source primary key tuple."""
    if key_is_integer:
        return int(key[0])
    if len(key) == 1:
        return str(key[0])
    return json.dumps(list(key), separators=(",", ":"), default=str)


def milvus_index_params(index: VectorIndex) -> dict[str, Any]:
    """The build parameters Milvus takes for the index type (AUTOINDEX takes none)."""
    if index.type == "HNSW":
        return {"M": index.hnsw_m, "efConstruction": index.hnsw_ef_construction}
    if index.type == "IVF_FLAT":
        return {"nlist": index.ivf_nlist}
    return {}


class MilvusTarget:
    LABEL = "Milvus"
    # What a task may choose for this store (tasks.validation checks the task against these).
    INDEX_TYPES = ("AUTOINDEX", "HNSW", "IVF_FLAT")
    METRICS = ("COSINE", "IP", "L2")
    RESERVED_FIELDS = frozenset(RESERVED_FIELDS)

    @staticmethod
    def payload_name_problem(name: str) -> str | None:
        """Why a payload column cannot be a field of a collection, or None."""
        if not FIELD_NAME.match(name):
            return (f"{name!r} cannot be a Milvus field name: Milvus takes letters, digits and underscores, "
                    "starting with a letter or underscore (rename the column in a view).")
        return None

    def __init__(self, *, uri: str, token: str = "", timeout: float = 30.0) -> None:
        self.uri, self.token, self.timeout = uri, token, timeout
        self._client = None

    @classmethod
    def from_model(cls, store) -> MilvusTarget:
        return cls(uri=store.uri, token=store.get_token())

    @property
    def client(self):
        if self._client is None:
            from pymilvus import MilvusClient

            try:
                self._client = MilvusClient(
                    uri=self.uri, token=self.token or "", timeout=self.timeout, grpc_options=GRPC_OPTIONS,
                )
            except Exception as exc:
                raise self.explain(exc) from None
        return self._client

    def explain(self, exc: Exception) -> ConnectorError:
        text = str(exc)
        lowered = text.lower()
        if any(s in lowered for s in ("unavailable", "fail connecting", "failed to connect", "timeout", "deadline")):
            return Unavailable(f"Cannot reach Milvus at {self.uri}: is the server running?")
        if "auth" in lowered or "credential" in lowered:
            return ConnectorError(f"Milvus at {self.uri} refused the token.")
        return ConnectorError(f"Milvus at {self.uri}: {text}")

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except ConnectorError:
            raise
        except Exception as exc:
            raise self.explain(exc) from exc

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                logger.debug("closing the Milvus client failed", exc_info=True)
            self._client = None

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> list[CheckResult]:
        try:
            names = self._call("list_collections")
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        return [CheckResult("connect", True, f"Connected to Milvus; {len(names)} collections.")]

    # -- collections -------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return sorted(self._call("list_collections"))

    def has_collection(self, name: str) -> bool:
        return bool(self._call("has_collection", name))

    def ensure_collection(self, spec: CollectionSpec) -> bool:
        """Create the collection if missing; return True when it was created."""
        from pymilvus import DataType

        if self.has_collection(spec.name):
            self._verify(spec)
            # A restarted server leaves collections released; searches and reads need them loaded.
            self._call("load_collection", spec.name)
            return False
        schema = self._call("create_schema", auto_id=False, enable_dynamic_field=False)
        if spec.key_is_integer and not spec.chunked:
            schema.add_field(KEY_FIELD, DataType.INT64, is_primary=True)
        else:
            schema.add_field(KEY_FIELD, DataType.VARCHAR, is_primary=True, max_length=4096)
        if spec.chunked:
            schema.add_field(ROW_KEY_FIELD, DataType.VARCHAR, max_length=4096)
            schema.add_field(CHUNK_FIELD, DataType.INT64)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=spec.dimension)
        schema.add_field(TEXT_FIELD, DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field(HASH_FIELD, DataType.VARCHAR, max_length=64)
        for column in spec.payload_columns:
            if column.is_integer:
                schema.add_field(column.name, DataType.INT64, nullable=True)
            elif column.is_float:
                schema.add_field(column.name, DataType.DOUBLE, nullable=True)
            elif column.data_type in {"json", "jsonb"}:
                schema.add_field(column.name, DataType.JSON, nullable=True)
            else:
                schema.add_field(column.name, DataType.VARCHAR, max_length=VARCHAR_MAX, nullable=True)
        # The vector index is made with the collection, not after the first snapshot: Milvus
        # loads (and so queries, searches or counts) only a collection whose vector field has an
        # index, and the pipeline reads while it writes (stored hashes when a snapshot resumes
        # after a crash, a chunked row's chunks, the console's search during the snapshot). Nor
        # is anything saved by waiting: Milvus indexes each segment in the background as it is
        # sealed, so rows written before or after the index is declared are indexed once either way.
        index_params = self._call("prepare_index_params")
        index_params.add_index(
            field_name=VECTOR_FIELD, index_type=spec.index.type, metric_type=spec.index.metric,
            params=milvus_index_params(spec.index),
        )
        if spec.chunked:
            index_params.add_index(field_name=ROW_KEY_FIELD, index_type="INVERTED")
        self._call(
            "create_collection", spec.name, schema=schema, index_params=index_params,
            consistency_level="Strong",
        )
        return True

    def _verify(self, spec: CollectionSpec) -> None:
        described = self._call("describe_collection", spec.name)
        fields = {f["name"]: f for f in described["fields"]}
        vector = fields.get(VECTOR_FIELD)
        if vector is None or KEY_FIELD not in fields:
            raise ConnectorError(
                f"Collection {spec.name!r} exists but was not made by Data Rsync "
                f"(no {KEY_FIELD}/{VECTOR_FIELD} fields): choose another collection name."
            )
        dim = int(vector.get("params", {}).get("dim", 0))
        if dim != spec.dimension:
            raise ConnectorError(
                f"Collection {spec.name!r} holds {dim}-dimensional vectors but the model makes "
                f"{spec.dimension}: use a new collection for this model."
            )
        missing = [c.name for c in spec.payload_columns if c.name not in fields]
        if missing:
            raise ConnectorError(
                f"Collection {spec.name!r} has no field for payload column(s) {', '.join(missing)}: "
                "re-snapshot into a new collection to change the payload."
            )
        self._verify_index(spec)

    def _verify_index(self, spec: CollectionSpec) -> None:
        """The collection's vector index must be the one the task asks for.

        Rebuilding it in place would release the collection (searches fail until it is loaded
        again), so a change of index is a new collection, as a change of model is. Build
        parameters are compared when the server reports them (Milvus Lite reports only the type
        and the metric).
        """
        try:
            described = self._call("describe_index", spec.name, VECTOR_FIELD)
        except ConnectorError:
            described = None
        if not described:
            return  # no index to compare (made by hand): loading will say what is wrong
        wanted = {"index_type": spec.index.type, "metric_type": spec.index.metric,
                  **{k: str(v) for k, v in milvus_index_params(spec.index).items()}}
        differs = [k for k, v in wanted.items() if k in described and str(described[k]).upper() != v.upper()]
        if differs:
            params = ", ".join(f"{k}={described[k]}" for k in ("M", "efConstruction", "nlist") if k in described)
            have = f"{described.get('index_type')}{f' ({params})' if params else ''} by {described.get('metric_type')}"
            raise ConnectorError(
                f"Collection {spec.name!r} is indexed with {have} but the task asks for {spec.index.describe()}: "
                "a different index needs a new collection (change the collection name, or drop this one and "
                "take a new snapshot)."
            )

    def drop_collection(self, name: str) -> None:
        if self.has_collection(name):
            self._call("drop_collection", name)

    # -- rows --------------------------------------------------------------------------------

    def upsert(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._call("upsert", name, rows)

    def delete(self, name: str, keys: list[int | str]) -> None:
        if keys:
            self._call("delete", name, ids=keys)

    def delete_all(self, name: str, *, key_is_integer: bool) -> None:
        """Empty the collection in place (a TRUNCATE): searches keep working, just find nothing."""
        expression = f"{KEY_FIELD} >= -9223372036854775808" if key_is_integer else f'{KEY_FIELD} like "%"'
        self._call("delete", name, filter=expression)

    def fetch_rows(self, name: str, row_keys: list, fields: list[str]) -> dict:
        """Chunked collections: every stored chunk of the given rows, as {row key: {point key: row}}."""
        found: dict = {}
        originals = {str(k): k for k in row_keys}  # row keys come back as text: hand back the caller's own
        for start in range(0, len(row_keys), READ_BATCH):
            part = [str(k) for k in row_keys[start : start + READ_BATCH]]
            expression = f"{ROW_KEY_FIELD} in [{', '.join(_quote(k) for k in part)}]"
            rows = self._call("query", name, filter=expression, output_fields=[KEY_FIELD, ROW_KEY_FIELD, *fields])
            for row in rows:
                found.setdefault(originals.get(row[ROW_KEY_FIELD], row[ROW_KEY_FIELD]), {})[row[KEY_FIELD]] = row
        return found

    def delete_rows(self, name: str, row_keys: list[str]) -> None:
        """Chunked collections: delete every chunk of these rows."""
        for start in range(0, len(row_keys), READ_BATCH):
            part = row_keys[start : start + READ_BATCH]
            self._call("delete", name, filter=f"{ROW_KEY_FIELD} in [{', '.join(_quote(k) for k in part)}]")

    def fetch(self, name: str, keys: list[int | str], fields: list[str]) -> dict[int | str, dict]:
        found: dict[int | str, dict] = {}
        for start in range(0, len(keys), READ_BATCH):
            part = keys[start : start + READ_BATCH]
            for row in self._call("query", name, ids=part, output_fields=[KEY_FIELD, *fields]):
                found[row[KEY_FIELD]] = row
        return found

    def count(self, name: str) -> int:
        result = self._call("query", name, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def iterate(self, name: str, fields: list[str], batch_size: int = READ_BATCH):
        """Every row of the collection, in batches (for verification and tests)."""
        iterator = self._call("query_iterator", name, batch_size=batch_size, output_fields=[KEY_FIELD, *fields])
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    return
                yield from batch
        finally:
            iterator.close()

    def search(self, name: str, vector: list[float], *, limit: int, fields: list[str]) -> list[dict]:
        hits = self._call(
            "search", name, data=[vector], limit=limit, anns_field=VECTOR_FIELD,
            output_fields=[KEY_FIELD, TEXT_FIELD, *fields],
        )
        return [
            {"key": hit["entity"].get(KEY_FIELD, hit.get("id")), "score": float(hit["distance"]), **hit["entity"]}
            for hit in hits[0]
        ]
