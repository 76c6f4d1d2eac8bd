"""Connectors: readers of sources and writers of vector stores, chosen by the object's kind.

Every source connector offers the same verbs (connect, describe_table, count_rows, begin_snapshot,
read_chunk, current_position, change_stream, check, list_tables) and every target the same
(ensure_collection, has_collection, drop_collection, upsert, delete, fetch, count, iterate,
search, check, close), so the pipeline never asks which one it has.
"""

from __future__ import annotations


def source_connector(source):
    """The connector for a `DataSource`."""
    from .mysql import MySQLSource
    from .polling import SQLiteSource
    from .postgres import PostgresSource

    connectors = {"mysql": MySQLSource, "postgresql": PostgresSource, "sqlite": SQLiteSource}
    try:
        return connectors[source.kind].from_model(source)
    except KeyError:
        raise ValueError(f"No connector for data sources of kind {source.kind!r}.") from None


def target_class(kind: str):
    """The connector class for a kind of vector store, for its rules (reserved names, index types)
    without opening a connection."""
    from .milvus import MilvusTarget
    from .qdrant import QdrantTarget

    connectors = {"milvus": MilvusTarget, "qdrant": QdrantTarget}
    try:
        return connectors[kind]
    except KeyError:
        raise ValueError(f"No connector for vector stores of kind {kind!r}.") from None


def target_connector(store):
    """The connector for a `VectorStore`."""
    return target_class(store.kind).from_model(store)
