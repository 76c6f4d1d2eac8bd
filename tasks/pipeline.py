"""The middle of the pipeline: map & render text -> embed (only what changed) -> write to the store.

Readers (snapshot chunks or a change stream) hand `Change` lists to `BatchProcessor`; the runner
commits the checkpoint only after `write()` returned, i.e. after the store acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from datasources.connectors.base import Change, Column, ConnectorError, TableInfo, Unavailable, normalize_value
from datasources.connectors.milvus import (
    CHUNK_FIELD,
    HASH_FIELD,
    KEY_FIELD,
    ROW_KEY_FIELD,
    TEXT_FIELD,
    VARCHAR_MAX,
    VECTOR_FIELD,
    CollectionSpec,
    VectorIndex,
    chunk_key,
    encode_key,
    split_chunk_key,
)
from datasources.embedders import Embedder

from .filters import FilterError, RowFilter
from .validation import mapping_problems

logger = logging.getLogger(__name__)


class MappingError(Exception):
    """The task's mapping does not fit the table (a column is missing, a name is reserved...)."""


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


@dataclass
class TaskMapping:
    """How rows of one table become points of one collection."""

    table: TableInfo
    key_columns: list[str]
    text_template: str
    payload_columns: list[Column]
    collection: str
    structured_columns: list[str] | None = None  # a structured vectorizer embeds these values, not text
    chunk_size: int = 0  # tokens per chunk; 0: a row is one point
    chunk_overlap: int = 0
    index: VectorIndex = field(default_factory=VectorIndex)
    row_filter: RowFilter | None = None  # rows it leaves out are not (or no longer) in the collection

    @classmethod
    def build(cls, task, table: TableInfo) -> TaskMapping:
        """The mapping of `task` onto `table` as the source describes it now.

        The table may have changed since the task was saved, so the catalog rules of
        `tasks.validation` (the ones saving applies) are applied again here.
        """
        if not table.primary_key:
            raise MappingError(f"Table {table.name!r} has no primary key.")
        problems = mapping_problems(task, table)
        if problems:
            raise MappingError(" ".join(problems))
        payload = [table.column(name) for name in dict.fromkeys(task.payload_columns)]
        structured = None
        if task.vectorizer_id and task.vectorizer.kind == "structured":
            structured = [c if isinstance(c, str) else c["name"] for c in task.vectorizer.columns]
        try:
            row_filter = RowFilter.for_task(task, table)
        except FilterError as exc:
            raise MappingError(str(exc)) from None
        return cls(
            table=table, key_columns=list(table.primary_key), text_template=task.text_template,
            payload_columns=payload, collection=task.collection, structured_columns=structured,
            chunk_size=task.chunk_size if structured is None else 0,
            chunk_overlap=min(task.chunk_overlap, max(task.chunk_size - 1, 0)),
            index=VectorIndex(
                type=task.index_type, metric=task.metric, hnsw_m=task.hnsw_m,
                hnsw_ef_construction=task.hnsw_ef_construction, ivf_nlist=task.ivf_nlist,
            ),
            row_filter=row_filter,
        )

    @property
    def chunking(self) -> bool:
        return self.chunk_size > 0

    @property
    def key_is_integer(self) -> bool:
        return len(self.key_columns) == 1 and bool(self.table.column(self.key_columns[0]).is_integer)

    def collection_spec(self, dimension: int) -> CollectionSpec:
        return CollectionSpec(
            name=self.collection, key_is_integer=self.key_is_integer, dimension=dimension,
            payload_columns=self.payload_columns, chunked=self.chunking, index=self.index,
        )

    def key_of(self, row: dict[str, Any]) -> tuple:
        return tuple(normalize_value(row.get(k)) for k in self.key_columns)

    def render(self, row: dict[str, Any]) -> str:
        if self.structured_columns is not None:
            return json.dumps([normalize_value(row.get(c)) for c in self.structured_columns])
        values = _Blank({k: "" if v is None else normalize_value(v) for k, v in row.items()})
        return self.text_template.format_map(values).strip()

    def payload(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column in self.payload_columns:
            value = normalize_value(row.get(column.name))
            if value is None:
                out[column.name] = None
            elif column.is_integer:
                out[column.name] = int(value)
            elif column.is_float:
                out[column.name] = float(value)
            elif column.data_type in {"json", "jsonb"}:
                out[column.name] = json.loads(value) if isinstance(value, str) else value
            else:
                text = value if isinstance(value, str) else json.dumps(value)
                if len(text) > VARCHAR_MAX:
                    raise ValueError(
                        f"column {column.name!r} holds {len(text)} characters; the store keeps at most {VARCHAR_MAX}"
                    )
                out[column.name] = text
        return out


class Chunker:
    """Cuts text into pieces of `size` tokens of the model, neighbours sharing `overlap` tokens.

    Cuts fall on token boundaries of the model's own tokenizer (whitespace words for APIs whose
    tokenizer we do not have), so every piece fits the model and the same text always gives the
    same pieces: chunk ids stay stable.
    """

    def __init__(self, embedder, size: int, overlap: int) -> None:
        self.embedder, self.size, self.overlap = embedder, size, overlap

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans = getattr(self.embedder, "token_spans", None)
        if spans is not None:
            return [s for s in spans(text) if s[1] > s[0]]
        import re

        return [m.span() for m in re.finditer(r"\S+", text)]

    def split(self, text: str) -> list[str]:
        spans = self._spans(text)
        if len(spans) <= self.size:
            return [text]
        step = self.size - self.overlap
        pieces = []
        for start in range(0, len(spans), step):
            window = spans[start : start + self.size]
            pieces.append(text[window[0][0] : window[-1][1]])
            if start + self.size >= len(spans):
                break
        return pieces


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Counters:
    read: int = 0
    embedded: int = 0
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0
    filtered: int = 0
    failed: int = 0

    def add(self, other: Counters) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_run_fields(self) -> dict[str, int]:
        return {f"rows_{name}": getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class DeadRow:
    key: list
    row: dict
    error: str


@dataclass
class PreparedBatch:
    """What one batch will do to the store, with the vectors already computed."""

    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[int | str] = field(default_factory=list)  # point keys of deleted rows
    row_deletes: list[int | str] = field(default_factory=list)  # rows whose chunks all go (chunked tasks)
    stale: list[int | str] = field(default_factory=list)  # chunks a shorter text no longer has
    left_out: list[int | str] = field(default_factory=list)  # rows the filter leaves out: deleted if present
    truncate_first: bool = False
    counters: Counters = field(default_factory=Counters)
    dead: list[DeadRow] = field(default_factory=list)
    last_timestamp: float | None = None
    notices: list[str] = field(default_factory=list)
    row_keys: dict[int | str, tuple] = field(default_factory=dict)  # point key -> the source row's key
    truncated: list[tuple] = field(default_factory=list)  # rows whose text the model could not take whole


def collapse(changes: list[Change]) -> tuple[bool, list[Change]]:
    """The last change per key, in order; a TRUNCATE discards everything before it.

    Duplicate keys inside one upsert batch have left duplicates in Milvus (milvus#44320), and
    only the final state of a key matters to the target anyway.
    """
    truncated = False
    latest: OrderedDict[tuple, Change] = OrderedDict()
    for change in changes:
        if change.op == "truncate":
            truncated = True
            latest.clear()
            continue
        latest.pop(change.key, None)
        latest[change.key] = change
    return truncated, list(latest.values())


class BatchProcessor:
    def __init__(
        self, mapping: TaskMapping, embedder: Embedder, target, *, assume_empty: bool = False
    ) -> None:
        self.mapping, self.embedder, self.target = mapping, embedder, target
        # During the first snapshot into a collection we just created, nothing can be reused.
        self.assume_empty = assume_empty
        self.chunker = Chunker(embedder, mapping.chunk_size, mapping.chunk_overlap) if mapping.chunking else None

    def prepare(self, changes: list[Change]) -> PreparedBatch:
        batch = PreparedBatch()
        batch.counters.read = sum(1 for c in changes if c.op != "truncate")
        stamps = [c.timestamp for c in changes if c.timestamp is not None]
        batch.last_timestamp = max(stamps) if stamps else None
        batch.truncate_first, final = collapse(changes)
        mapping = self.mapping

        # One entry per point: a row, or each chunk of a row when the task cuts text into chunks.
        pending: list[tuple[int | str, Change, str, str, dict]] = []
        new_points: dict[int | str, set] = {}  # row key -> its point keys (chunked tasks)
        for change in final:
            try:
                row_key = encode_key(change.key, mapping.key_is_integer)
            except (TypeError, ValueError) as exc:
                batch.dead.append(DeadRow(list(change.key), _jsonable(change.row), f"bad key: {exc}"))
                continue
            if change.op == "delete":
                (batch.row_deletes if mapping.chunking else batch.deletes).append(row_key)
                continue
            if mapping.row_filter is not None and not mapping.row_filter.matches(change.row):
                batch.counters.filtered += 1
                if not (self.assume_empty and not batch.truncate_first):  # it may be there from before
                    batch.left_out.append(row_key)
                continue
            try:
                text = mapping.render(change.row)
                payload = mapping.payload(change.row)
            except (KeyError, ValueError, TypeError) as exc:
                batch.dead.append(DeadRow(list(change.key), _jsonable(change.row), f"cannot map row: {exc}"))
                continue
            if not mapping.chunking:
                pending.append((row_key, change, text, text_hash(text), payload))
                continue
            points = new_points.setdefault(row_key, set())
            for number, piece in enumerate(self.chunker.split(text)):
                point_key = chunk_key(row_key, number)
                points.add(point_key)
                pending.append((point_key, change, piece, text_hash(piece),
                                {**payload, ROW_KEY_FIELD: str(row_key), CHUNK_FIELD: number}))

        stored: dict[int | str, dict] = {}
        if pending and not (self.assume_empty and not batch.truncate_first):
            if mapping.chunking:
                by_row = self.target.fetch_rows(mapping.collection, list(new_points), [HASH_FIELD, VECTOR_FIELD])
                for row_key, points in by_row.items():
                    stored.update(points)
                    # Chunks the new text no longer has go after the new ones are written.
                    batch.stale.extend(sorted(set(points) - new_points.get(row_key, set()), key=str))
            else:
                stored = self.target.fetch(mapping.collection, [p[0] for p in pending], [HASH_FIELD, VECTOR_FIELD])

        to_embed: dict[str, str] = {}  # hash -> text: the same text is embedded once per batch
        for point_key, _, text, digest, _ in pending:
            known = stored.get(point_key)
            if known is None or known.get(HASH_FIELD) != digest:
                to_embed.setdefault(digest, text)
        if to_embed and not mapping.chunking:
            too_long = self._too_long(to_embed)
            batch.truncated = [c.key for _, c, _, digest, _ in pending if digest in too_long]
        vectors: dict[str, list[float]] = {}
        rejected: dict[str, str] = {}
        if to_embed:
            digests = list(to_embed)
            result = self.embedder.embed([to_embed[d] for d in digests])
            for position, (digest, vector) in enumerate(zip(digests, result.vectors)):
                if vector is None:
                    rejected[digest] = result.errors.get(position, "the model returned no vector")
                else:
                    vectors[digest] = vector

        failed_rows: set[tuple] = set()
        for _, change, _, digest, _ in pending:
            if digest in rejected and change.key not in failed_rows:
                failed_rows.add(change.key)
                batch.dead.append(DeadRow(list(change.key), _jsonable(change.row), rejected[digest]))
        embedded_rows: set[tuple] = set()
        for point_key, change, text, digest, payload in pending:
            if change.key in failed_rows:
                continue  # a row is written whole or not at all: its old points stay meanwhile
            vector = vectors.get(digest)
            if vector is None:
                vector = list(stored[point_key][VECTOR_FIELD])
            else:
                embedded_rows.add(change.key)
            batch.row_keys[point_key] = change.key
            batch.upserts.append({
                KEY_FIELD: point_key, VECTOR_FIELD: vector, TEXT_FIELD: text[:VARCHAR_MAX],
                HASH_FIELD: digest, **payload,
            })
        if failed_rows:
            failed_keys = {encode_key(k, mapping.key_is_integer) for k in failed_rows}
            batch.stale = [k for k in batch.stale if split_chunk_key(k) not in failed_keys]
        written_rows = {c.key for _, c, _, _, _ in pending} - failed_rows
        batch.counters.embedded = len(embedded_rows)
        batch.counters.unchanged = len(written_rows - embedded_rows)
        batch.counters.upserted = len(written_rows)
        batch.counters.failed = len(batch.dead)
        return batch

    def _too_long(self, texts: dict[str, str]) -> set[str]:
        """Hashes of the texts longer than the model takes (it embeds only their beginning).

        Only for models whose tokenizer we have; chunking tasks cut text to fit instead.
        """
        counts = getattr(self.embedder, "token_counts", None)
        limit = self.embedder.max_tokens
        if counts is None or not limit:
            return set()
        digests = list(texts)
        return {d for d, n in zip(digests, counts([texts[d] for d in digests])) if n > limit}

    def write(self, batch: PreparedBatch, spec_dimension: int = 0) -> None:
        """Apply the batch; returns only when the store acknowledged every write.

        New points are written before stale chunks are deleted, so a failure in between never
        leaves a row without vectors.
        """
        name = self.mapping.collection
        if batch.truncate_first:
            self.target.delete_all(name, key_is_integer=self.mapping.key_is_integer and not self.mapping.chunking)
        if batch.deletes:
            self.target.delete(name, batch.deletes)
        if batch.row_deletes:
            self.target.delete_rows(name, [str(k) for k in batch.row_deletes])
        if batch.left_out:
            if self.mapping.chunking:
                self.target.delete_rows(name, [str(k) for k in batch.left_out])
            else:
                self.target.delete(name, batch.left_out)
        if batch.upserts:
            try:
                self.target.upsert(name, batch.upserts)
            except Unavailable:
                raise
            except ConnectorError as exc:
                self._upsert_one_by_one(batch, exc)
        if batch.stale:
            self.target.delete(name, batch.stale)
        batch.counters.deleted = len(batch.deletes) + len(batch.row_deletes)

    def _upsert_one_by_one(self, batch: PreparedBatch, first_error: Exception) -> None:
        """Isolate the rows the store rejects so the rest of the batch still lands.

        "One" is a row with all its chunks, in one call: the store takes or refuses a call
        whole, so a refused row keeps every point it had (its old text, whole) rather than a mix
        of new and old chunks, and its stale chunks are kept too.
        """
        logger.warning("batch upsert rejected (%s); retrying row by row", first_error)
        by_row: OrderedDict[int | str, list[dict[str, Any]]] = OrderedDict()
        for point in batch.upserts:
            row_key = split_chunk_key(point[KEY_FIELD]) if self.mapping.chunking else point[KEY_FIELD]
            by_row.setdefault(row_key, []).append(point)
        accepted, rejected_rows = [], set()
        for row_key, points in by_row.items():
            try:
                self.target.upsert(self.mapping.collection, points)
                accepted.extend(points)
            except Unavailable:
                raise
            except ConnectorError as exc:
                payload = {k: v for k, v in points[0].items() if k not in (VECTOR_FIELD, KEY_FIELD, CHUNK_FIELD)}
                # The letter names the source row (what a replay reads again), not the point.
                source_key = list(batch.row_keys.get(points[0][KEY_FIELD], (row_key,)))
                batch.dead.append(DeadRow(source_key, _jsonable(payload), str(exc)))
                rejected_rows.add(row_key)
        batch.upserts = accepted
        if rejected_rows:
            batch.stale = [k for k in batch.stale if split_chunk_key(k) not in rejected_rows]
        batch.counters.upserted -= len(rejected_rows)
        batch.counters.failed = len(batch.dead)


def _jsonable(row: dict) -> dict:
    return {k: normalize_value(v) for k, v in row.items()}
