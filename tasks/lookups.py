"""Reads that reach outside the metadata database: preview rows from the source, search the store.

Shared by the console, the API and management commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasources.connectors import source_connector, target_connector
from datasources.connectors.base import ConnectorError
from datasources.connectors.milvus import TEXT_FIELD
from datasources.embedders import text_measure_for_task, vectorizer_for_task
from datasources.models import DataSource, VectorStore

from .pipeline import Chunker, MappingError, TaskMapping

PREVIEW_ROWS = 5


@dataclass
class PreviewRow:
    key: list
    text: str
    payload: dict
    error: str = ""
    notice: str = ""  # e.g. the text is longer than the model takes

    def as_dict(self) -> dict:
        return {"key": self.key, "text": self.text, "payload": self.payload, "error": self.error,
                "notice": self.notice}


def table_catalog(source: DataSource) -> dict[str, list[dict]]:
    """Tables of the source with their columns, for pickers in forms."""
    connector = source_connector(source)
    conn = connector.connect()
    try:
        catalog = {}
        for table in connector.list_tables():
            info = connector.describe_table(table, conn)
            catalog[table] = [
                {"name": c.name, "type": c.data_type, "primary_key": c.name in info.primary_key}
                for c in info.columns
            ]
        return catalog
    finally:
        conn.close()


def preview(task, *, limit: int = PREVIEW_ROWS) -> list[PreviewRow]:
    """The text and payload that `limit` real rows would be embedded and stored with.

    Raises ConnectorError (source down, table missing) or MappingError (template or payload wrong).
    """
    connector = source_connector(task.source)
    conn = connector.connect()
    try:
        table = connector.describe_table(task.table, conn)
        if table is None:
            raise ConnectorError(f"Table {task.table!r} does not exist in database {task.source.database!r}.")
        mapping = TaskMapping.build(task, table)
        rows = connector.read_chunk(conn, table, after_key=None, limit=limit)
    finally:
        conn.close()
    out = []
    kept = []
    for row in rows:
        key = list(mapping.key_of(row))
        try:
            shown = PreviewRow(key, mapping.render(row), mapping.payload(row))
        except (KeyError, ValueError, TypeError) as exc:
            out.append(PreviewRow(key, "", {}, error=str(exc)))
            continue
        out.append(shown)
        if mapping.row_filter is not None and not mapping.row_filter.matches(row):
            shown.notice = "Left out by the row filter: not stored."
        else:
            kept.append(shown)
    _note_length(task, mapping, kept)
    return out


def _note_length(task, mapping: TaskMapping, rows: list[PreviewRow]) -> None:
    """Say how the model takes each text: in how many chunks, or whether it is cut."""
    if not rows or mapping.structured_columns is not None:
        return
    embedder = text_measure_for_task(task)
    if mapping.chunking:
        chunker = Chunker(embedder, mapping.chunk_size, mapping.chunk_overlap)
        for row in rows:
            pieces = len(chunker.split(row.text))
            if pieces > 1:
                row.notice = f"Stored as {pieces} chunks of up to {mapping.chunk_size} tokens."
        return
    counts = getattr(embedder, "token_counts", None)
    if counts is None or not getattr(embedder, "max_tokens", None):
        return
    for row, tokens in zip(rows, counts([r.text for r in rows])):
        if tokens > embedder.max_tokens:
            row.notice = (f"{tokens} tokens: the model embeds only the first {embedder.max_tokens}. "
                          "Set a chunk size to embed all of it.")


def search(task, query: str, *, limit: int = 10) -> list[dict]:
    """Top hits of the task's collection for `query`: key, score, text and payload."""
    query = (query or "").strip()
    if not query:
        raise MappingError("Type something to search for.")
    vector = vectorizer_for_task(task).encode([query])[0]
    target = target_connector(task.store)
    try:
        if not target.has_collection(task.collection):
            raise ConnectorError(f"Collection {task.collection!r} does not exist yet: start the task first.")
        hits = target.search(task.collection, vector, limit=limit, fields=list(task.payload_columns))
    finally:
        target.close()
    return [
        {"key": h["key"], "score": round(h["score"], 4), "text": h.get(TEXT_FIELD, ""),
         "payload": {c: h.get(c) for c in task.payload_columns}}
        for h in hits
    ]


def store_collections(store: VectorStore) -> list[str]:
    target = target_connector(store)
    try:
        return target.list_collections()
    finally:
        target.close()
