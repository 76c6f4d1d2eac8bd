"""Timestamp polling: change capture for any SQL database, without a change log.

The seed's "simple sync" read `WHERE updated_at > last LIMIT 1000`, which skips rows sharing the
last timestamp when a page ends among them. Here pages are cut by `(updated_at, primary key)`, so
no row is ever skipped, and each poll re-reads a small overlap window so rows committed late with
an earlier timestamp are still seen. Deletes are seen only through a soft-delete column: a row
removed with DELETE stays in the target (the task page says so).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import (
    Change,
    ChangeBatch,
    CheckResult,
    Column,
    ConnectorError,
    TableInfo,
    borrow_or_open,
    key_match_sql,
    normalize_value,
)


class SQLiteSource:
    """A SQLite database file, for polling (SQLite has no change log a client can follow)."""

    placeholder = "?"

    def __init__(self, *, path: str) -> None:
        self.path = path

    @classmethod
    def from_model(cls, source) -> SQLiteSource:
        return cls(path=source.database)

    @staticmethod
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def connect(self, **_):
        if not Path(self.path).exists():
            raise ConnectorError(f"SQLite database file {self.path!r} does not exist.")
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.isolation_level = None  # autocommit; snapshots use explicit BEGIN
        return conn

    def list_tables(self) -> list[str]:
        conn = self.connect()
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                                "ORDER BY name").fetchall()
            return [r[0] for r in rows]
        finally:
            conn.close()

    def describe_table(self, table: str, conn=None) -> TableInfo | None:
        with borrow_or_open(conn, self.connect) as conn:
            rows = conn.execute(f"PRAGMA table_info({self.quote(table)})").fetchall()
            if not rows:
                return None
            columns = [Column(name=r[1], data_type=_sqlite_type(r[2]), nullable=not r[3]) for r in rows]
            primary = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
            return TableInfo(name=table, columns=columns, primary_key=primary)

    def count_rows(self, table: TableInfo, conn=None) -> int:
        with borrow_or_open(conn, self.connect) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {self.quote(table.name)}").fetchone()[0])

    def begin_snapshot(self, conn, **_) -> dict:
        conn.execute("BEGIN")  # a read transaction: one consistent view of the file
        return {}

    def read_chunk(self, conn, table: TableInfo, *, after_key: list | None, limit: int) -> list[dict[str, Any]]:
        return _keyset_page(self, conn, table, order=table.primary_key, after=after_key, limit=limit)

    def read_keys(self, conn, table: TableInfo, keys: list[list]) -> list[dict[str, Any]]:
        """The rows with these primary keys as they are now (missing keys are simply absent)."""
        if not keys:
            return []
        columns = ", ".join(self.quote(c.name) for c in table.columns)
        where = key_match_sql([self.quote(k) for k in table.primary_key], len(keys), self.placeholder)
        names = [c.name for c in table.columns]
        rows = conn.execute(f"SELECT {columns} FROM {self.quote(table.name)} WHERE {where}",
                            [value for key in keys for value in key]).fetchall()
        return [dict(zip(names, row)) for row in rows]

    def check(self, *, table: str | None = None, required_columns: dict | None = None, **_) -> list[CheckResult]:
        try:
            conn = self.connect()
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        conn.close()
        return [CheckResult("connect", True, f"Opened {self.path}.")]


def _sqlite_type(declared: str) -> str:
    upper = (declared or "").upper()
    if "INT" in upper:
        return "integer"
    if any(t in upper for t in ("REAL", "FLOA", "DOUB")):
        return "double"
    if "TIME" in upper or "DATE" in upper:
        return "datetime"
    return "text"


def _quote_of(base):
    if hasattr(base, "quote"):
        return base.quote
    from .mysql import quote_ident

    if type(base).__name__ == "MySQLSource":
        return quote_ident
    return lambda name: '"' + name.replace('"', '""') + '"'


def _keyset_page(base, conn, table: TableInfo, *, order: list[str], after: list | None, limit: int,
                 lower: list | None = None) -> list[dict[str, Any]]:
    """Rows in `order` after the tuple `after` (and not before `lower`), one page."""
    quote = _quote_of(base)
    mark = getattr(base, "placeholder", "%s")
    columns = ", ".join(quote(c.name) for c in table.columns)
    cols = [quote(c) for c in order]
    tuple_sql = cols[0] if len(cols) == 1 else f"({', '.join(cols)})"
    marks = mark if len(cols) == 1 else f"({', '.join([mark] * len(cols))})"
    where, params = [], []
    if after is not None:
        where.append(f"{tuple_sql} > {marks}")
        params.extend(after)
    if lower is not None:  # a bound on the first ordering column only (the overlap window)
        where.append(f"{cols[0]} >= {mark}")
        params.extend(lower[:1])
    sql = f"SELECT {columns} FROM {quote(table.name)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {', '.join(cols)} LIMIT {int(limit)}"
    names = [c.name for c in table.columns]
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _parse_ts(value) -> Any:
    """Watermarks are stored as text; give the database back a value it compares correctly."""
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


class PollingSource:
    """Wraps a source connector (MySQL, PostgreSQL, SQLite) and follows a table by timestamp."""

    def __init__(self, base, task) -> None:
        self.base = base
        self.updated_at = task.updated_at_column
        self.soft_delete = task.soft_delete_column
        self.poll_interval = max(float(task.poll_interval), 0.05)
        self.overlap = max(float(task.overlap_seconds), 0.0)

    def __getattr__(self, item):  # catalog and snapshot reads are the base connector's
        return getattr(self.base, item)

    def is_deleted(self, row: dict[str, Any]) -> bool:
        """A row marked deleted in the soft-delete column (the only deletes polling can see)."""
        return bool(self.soft_delete) and row.get(self.soft_delete) not in (None, 0, False, "", "0")

    def check(self, *, table: str | None = None, required_columns: dict | None = None, **_) -> list[CheckResult]:
        try:
            conn = self.base.connect()
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        try:
            results = [CheckResult("connect", True, "Connected (polling: no change log needed).")]
            if not table:
                return results
            info = self.base.describe_table(table, conn)
            if info is None:
                return [*results, CheckResult("table", False, f"Table {table!r} does not exist.")]
            names = {c.name for c in info.columns}
            if not info.primary_key:
                results.append(CheckResult("primary_key", False, f"Table {table!r} has no primary key: add one."))
            if not self.updated_at:
                results.append(CheckResult("updated_at_column", False,
                                           "Polling needs the column that changes on every write (updated_at)."))
            elif self.updated_at not in names:
                results.append(CheckResult("updated_at_column", False,
                                           f"Table {table!r} has no column {self.updated_at!r} to poll by."))
            if self.soft_delete and self.soft_delete not in names:
                results.append(CheckResult("soft_delete_column", False,
                                           f"Table {table!r} has no soft-delete column {self.soft_delete!r}."))
            for purpose, columns in (required_columns or {}).items():
                unknown = [c for c in columns if c not in names]
                if unknown:
                    results.append(CheckResult(purpose.replace(" ", "_"), False,
                                               f"The {purpose} names missing column(s) {', '.join(unknown)}."))
            return results
        finally:
            conn.close()

    def _max_updated(self, conn, table: TableInfo):
        quote = _quote_of(self.base)
        cursor = conn.cursor()
        try:
            cursor.execute(f"SELECT MAX({quote(self.updated_at)}) FROM {quote(table.name)}")
            return cursor.fetchone()[0]
        finally:
            cursor.close()

    def begin_snapshot(self, conn, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        watermark = self._max_updated(conn, table or self._described)  # noted before the snapshot reads
        self.base.begin_snapshot(conn)
        return {"ts": normalize_value(watermark), "pk": None}

    def current_position(self, conn=None, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        with borrow_or_open(conn, self.base.connect) as conn:
            return {"ts": normalize_value(self._max_updated(conn, table or self._described)), "pk": None}

    # The table last described: snapshot-only runs do not pass the table to begin_snapshot.
    _described: TableInfo | None = None

    def describe_table(self, table: str, conn=None) -> TableInfo | None:
        info = self.base.describe_table(table, conn)
        self._described = info
        return info

    def change_stream(self, table: TableInfo, position: dict, *, task_id: int, heartbeat: float,
                      read_timeout: float, max_rows: int = 1000) -> PollStream:
        return PollStream(self, table, position, max_rows=max_rows, heartbeat=heartbeat)


class PollStream:
    """Polls forever: pages of changed rows, then heartbeats until the next poll is due."""

    def __init__(self, source: PollingSource, table: TableInfo, position: dict, *, max_rows: int,
                 heartbeat: float) -> None:
        self.source, self.table, self.max_rows, self.heartbeat = source, table, max_rows, heartbeat
        self.position = dict(position or {})
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def acknowledge(self, position: dict) -> None:
        """Nothing to tell the database: the checkpoint alone is the position."""

    def _poll(self, conn) -> Iterator[ChangeBatch]:
        source, table = self.source, self.table
        order = [source.updated_at, *table.primary_key]
        watermark = _parse_ts(self.position.get("ts"))
        lower = None
        if watermark is not None:
            if isinstance(watermark, dt.datetime):
                lower = [watermark - dt.timedelta(seconds=source.overlap)]
            elif isinstance(watermark, (int, float)):
                lower = [watermark - source.overlap]
            else:
                lower = [watermark]
        after = None
        newest = self.position.get("ts")
        while not self._closed:
            rows = _keyset_page(source.base, conn, table, order=order, after=after, limit=self.max_rows,
                                lower=None if after is not None else lower)
            if not rows:
                return
            changes = []
            for row in rows:
                key = tuple(normalize_value(row[k]) for k in table.primary_key)
                changes.append(Change("delete" if source.is_deleted(row) else "upsert", key, row))
            last = rows[-1]
            after = [last[c] for c in order]
            stamp = normalize_value(last[source.updated_at])
            if newest is None or str(stamp) > str(newest):
                newest = stamp
            # Every page ends on a whole row, so any page boundary is a safe place to resume.
            yield ChangeBatch(changes=changes, position={"ts": newest, "pk": None})
            if len(rows) < self.max_rows:
                return

    def __iter__(self) -> Iterator[ChangeBatch]:
        while not self._closed:
            conn = self.source.base.connect()
            try:
                for batch in self._poll(conn):
                    self.position = batch.position
                    yield batch
            finally:
                conn.close()
            deadline = time.monotonic() + self.source.poll_interval
            while not self._closed and time.monotonic() < deadline:
                time.sleep(min(self.heartbeat, max(deadline - time.monotonic(), 0.0)))
                yield ChangeBatch(position=None)  # idle: lets the runner look at its stop flag


def task_source_connector(task):
    """The connector a task reads through: its source's, wrapped for polling when it polls."""
    from . import source_connector

    base = source_connector(task.source)
    if getattr(task, "capture", "log") == "poll":
        return PollingSource(base, task)
    return base
