"""Timestamp polling: change capture for any SQL database, without a change log.

The seed's "simple sync" read `WHERE updated_at > last LIMIT 1000`, which skips rows sharing the
last timestamp when a page ends among them. Here pages are cut by `(updated_at, primary key)`, so
no row is ever skipped, and each poll re-reads a small overlap window so rows committed late with
an earlier timestamp are still seen. Deletes are seen only through a soft-delete column: a row
removed with DELETE stays in the target (the task page says so).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


def _sortable(value) -> Any:
    """A value of the polling column in a form Python orders the way the database does (the
    checkpoint stores text, the database returns datetimes or, from SQLite, text)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return _parse_ts(value)


def _minus(value, seconds: float) -> Any:
    """`value` moved `seconds` back (the overlap window), for a datetime or a number."""
    if isinstance(value, dt.datetime):
        return value - dt.timedelta(seconds=seconds)
    if isinstance(value, (int, float)):
        return value - seconds
    return value


def _row_digest(row: dict[str, Any]) -> str:
    text = json.dumps({k: normalize_value(v) for k, v in row.items()}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Cursor:
    """Where polling resumes: the `(updated_at, primary key)` of the last row read, in the order
    pages are cut. `pk` None means "before every row stamped `ts`" (a position clamped to the
    source's clock, or one noted before a snapshot)."""

    ts: Any  # as the database returned it (or parsed back from the checkpoint)
    pk: tuple | None = None

    @classmethod
    def from_position(cls, position: dict | None) -> Cursor | None:
        position = position or {}
        if position.get("ts") is None:
            return None
        pk = position.get("pk")
        return cls(_parse_ts(position["ts"]), tuple(pk) if pk is not None else None)

    def as_position(self) -> dict:
        return {"ts": normalize_value(self.ts), "pk": list(self.pk) if self.pk is not None else None}

    def order(self) -> tuple:
        return (_sortable(self.ts), 0, ()) if self.pk is None else (_sortable(self.ts), 1, self.pk)


class PollingSource:
    """Wraps a source connector (MySQL, PostgreSQL, SQLite) and follows a table by timestamp."""

    def __init__(self, base, task) -> None:
        self.base = base
        self.updated_at = task.updated_at_column
        self.soft_delete = task.soft_delete_column
        self.poll_interval = max(float(task.poll_interval), 0.05)
        self.overlap = max(float(task.overlap_seconds), 0.0)
        # A page is one batch through the pipeline: the task's batch size is the page size.
        self.page_rows = max(int(task.batch_size or 0), 1)

    def __getattr__(self, item):  # catalog and snapshot reads are the base connector's
        return getattr(self.base, item)

    def is_deleted(self, row: dict[str, Any]) -> bool:
        """A row marked deleted in the soft-delete column (the only deletes polling can see; a
        snapshot or a replay must not bring it back)."""
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

    def _now_sql(self, table: TableInfo) -> str | None:
        """The source's clock as an SQL expression comparable with the polling column, or None
        when the column holds no date or time (numbers: nothing to compare with)."""
        if isinstance(self.base, SQLiteSource):
            return "strftime('%Y-%m-%d %H:%M:%f', 'now')"  # what CURRENT_TIMESTAMP is, with milliseconds
        column = table.column(self.updated_at)
        data_type = (column.data_type if column is not None else "").lower()
        if "date" not in data_type and "time" not in data_type:
            return None
        if type(self.base).__name__ == "MySQLSource":
            return "CURRENT_TIMESTAMP(6)"
        return "LOCALTIMESTAMP"  # PostgreSQL: compares right with timestamp and timestamptz columns

    def clock(self, conn, table: TableInfo) -> tuple[Any, int, Any]:
        """`(newest stamp not in the future, rows stamped in the future, latest future stamp)`
        by the source's own clock; the polling position never moves past the first.

        A row stamped ahead of the clock (a writer with a wrong clock, a stamp set by hand)
        would otherwise carry the position into the future, and every row written afterwards
        with a true stamp would fall behind it and never be read.
        """
        quote = _quote_of(self.base)
        column, name = quote(self.updated_at), quote(table.name)
        now = self._now_sql(table)
        cursor = conn.cursor()
        try:
            if now is None:
                cursor.execute(f"SELECT MAX({column}) FROM {name}")
                return cursor.fetchone()[0], 0, None
            cursor.execute(f"SELECT MAX({column}) FROM {name} WHERE {column} <= {now}")
            newest = cursor.fetchone()[0]
            cursor.execute(f"SELECT COUNT(*), MAX({column}) FROM {name} WHERE {column} > {now}")
            future, latest = cursor.fetchone()
            return newest, int(future or 0), latest
        finally:
            cursor.close()

    def _start(self, conn, table: TableInfo) -> dict:
        newest, _, _ = self.clock(conn, table)
        return {"ts": normalize_value(newest), "pk": None}

    def begin_snapshot(self, conn, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        position = self._start(conn, table or self._described)  # noted before the snapshot reads
        self.base.begin_snapshot(conn)
        return position

    def current_position(self, conn=None, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        with borrow_or_open(conn, self.base.connect) as conn:
            return self._start(conn, table or self._described)

    # The table last described: snapshot-only runs do not pass the table to begin_snapshot.
    _described: TableInfo | None = None

    def describe_table(self, table: str, conn=None) -> TableInfo | None:
        info = self.base.describe_table(table, conn)
        self._described = info
        return info

    def change_stream(self, table: TableInfo, position: dict, *, task_id: int, heartbeat: float,
                      read_timeout: float, max_rows: int = 1000) -> PollStream:
        # `max_rows` is when a log reader hands over what it gathered; polling reads whole pages.
        return PollStream(self, table, position, max_rows=self.page_rows, heartbeat=heartbeat)


class PollStream:
    """Polls forever: pages of changed rows, then heartbeats until the next poll is due.

    Each poll reads, in `(updated_at, primary key)` order, from the position minus the overlap
    window (from just after the position when there is no window), page by page, each page
    starting after the last row of the one before. The position is the `(updated_at, key)` of
    the last row read, so rows sharing a timestamp across a page boundary are neither skipped
    nor read twice, and it never moves past the source's clock (see `PollingSource.clock`).

    Rows the window brings back unchanged since this stream delivered them are not delivered
    again: re-writing them would cost a store write each poll, and a second copy of a changed
    row queued before the first reached the store would be embedded twice.
    """

    def __init__(self, source: PollingSource, table: TableInfo, position: dict, *, max_rows: int,
                 heartbeat: float) -> None:
        self.source, self.table, self.max_rows, self.heartbeat = source, table, max_rows, heartbeat
        self.cursor = Cursor.from_position(position)
        self.position = self.cursor.as_position() if self.cursor else {"ts": None, "pk": None}
        self._delivered: dict[tuple, tuple[Any, str]] = {}  # key -> (sortable stamp, digest of the row)
        self._reported: tuple | None = None  # the future-stamp notice last given
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def acknowledge(self, position: dict) -> None:
        """Nothing to tell the database: the checkpoint alone is the position."""

    def _bounds(self) -> tuple[list | None, list | None]:
        """`(after, lower)` for the first page of a poll."""
        cursor = self.cursor
        if cursor is None:
            return None, None
        if self.source.overlap > 0 or cursor.pk is None:
            return None, [_minus(cursor.ts, self.source.overlap)]
        return [cursor.ts, *cursor.pk], None

    def _advance(self, last: dict[str, Any], key: tuple, newest) -> None:
        """Move the position to the row just read, but never past the source's clock."""
        stamp = last[self.source.updated_at]
        if newest is None:
            return  # every row is stamped in the future: stay where we are
        candidate = Cursor(stamp, key)
        if _sortable(stamp) > _sortable(newest):
            candidate = Cursor(newest, None)
        if self.cursor is None or candidate.order() > self.cursor.order():
            self.cursor = candidate

    def _forget_behind(self) -> None:
        """Drop what the next poll's window can no longer bring back."""
        if self.cursor is None:
            return
        floor = _sortable(_minus(self.cursor.ts, self.source.overlap))
        try:
            self._delivered = {k: v for k, v in self._delivered.items() if not v[0] < floor}
        except TypeError:  # stamps Python cannot order against the position: keep everything
            pass

    def _future_notice(self, future: int, latest) -> list[str]:
        state = (future, normalize_value(latest)) if future else None
        if state == self._reported:
            return []
        self._reported = state
        if not future:
            return []
        return [
            f"{future} row(s) of {self.table.name} have {self.source.updated_at} later than the source's clock "
            f"(up to {normalize_value(latest)}). They are synced, but polling does not move past the present, "
            f"so they are read again on every poll until then: correct their {self.source.updated_at}."
        ]

    def _poll(self, conn) -> Iterator[ChangeBatch]:
        source, table = self.source, self.table
        order = [source.updated_at, *table.primary_key]
        newest, future, latest = source.clock(conn, table)
        notices = self._future_notice(future, latest)
        after, lower = self._bounds()
        while not self._closed:
            rows = _keyset_page(source.base, conn, table, order=order, after=after, limit=self.max_rows,
                                lower=lower)
            lower = None  # the window bounds the first page; the others follow on from it
            changes = []
            for row in rows:
                key = tuple(normalize_value(row[k]) for k in table.primary_key)
                digest = _row_digest(row)
                seen = self._delivered.get(key)
                if seen is not None and seen[1] == digest:
                    continue
                self._delivered[key] = (_sortable(row[source.updated_at]), digest)
                changes.append(Change("delete" if source.is_deleted(row) else "upsert", key, row))
            before = self.cursor
            if rows:
                last = rows[-1]
                after = [last[c] for c in order]
                self._advance(last, tuple(normalize_value(last[k]) for k in table.primary_key), newest)
            if changes or notices or self.cursor != before:
                # Every page ends on a whole row, so any page boundary is a safe place to resume.
                position = self.cursor.as_position() if self.cursor else {"ts": None, "pk": None}
                yield ChangeBatch(changes=changes, position=position, notices=notices)
                notices = []
            if len(rows) < self.max_rows:
                break
        self._forget_behind()

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
