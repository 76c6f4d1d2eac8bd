"""What every source and store connector speaks: changes, positions, catalog columns, check results."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@contextlib.contextmanager
def borrow_or_open(conn: Any, connect: Callable[[], Any]) -> Iterator[Any]:
    """The caller's connection when it lends one (it stays open: it may hold a snapshot), else a
    new one from `connect`, closed afterwards."""
    if conn is not None:
        yield conn
        return
    conn = connect()
    try:
        yield conn
    finally:
        conn.close()


def key_match_sql(key_columns: list[str], count: int, mark: str = "%s") -> str:
    """A WHERE condition matching `count` primary keys: `k IN (...)`, or row values for a
    composite key (MySQL, MariaDB, PostgreSQL and SQLite all take `(a, b) IN ((..), (..))`)."""
    if len(key_columns) == 1:
        return f"{key_columns[0]} IN ({', '.join([mark] * count)})"
    one = f"({', '.join([mark] * len(key_columns))})"
    return f"({', '.join(key_columns)}) IN ({', '.join([one] * count)})"


class ConnectorError(Exception):
    """A failure a user can act on; the message is shown to them as it is."""


class Unavailable(ConnectorError):
    """The server cannot be reached right now: retry later, never drop the rows."""


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # as the catalog names it: int, bigint, varchar, text, datetime, ...
    nullable: bool = True
    max_length: int | None = None

    @property
    def is_integer(self) -> bool:
        return self.data_type in {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"}

    @property
    def is_float(self) -> bool:
        return self.data_type in {"float", "double", "real", "double precision"}

    @property
    def is_text(self) -> bool:
        return self.data_type in {
            "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set",
            "character varying", "character",
        }


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: list[Column]
    primary_key: list[str]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass
class Change:
    """One row change: `op` is "upsert" or "delete"; `key` is the primary key tuple.

    `row` holds the after-image for upserts (the before-image for deletes); `before` holds the
    before-image of an update, so the pipeline can tell whether the embedded text changed.
    """

    op: str
    key: tuple
    row: dict[str, Any]
    before: dict[str, Any] | None = None
    timestamp: float | None = None  # when the source committed it (seconds since the epoch)


@dataclass
class ChangeBatch:
    """Changes in commit order; `position` is set when the batch ends on a transaction boundary."""

    changes: list[Change] = field(default_factory=list)
    position: dict | None = None
    notices: list[str] = field(default_factory=list)  # DDL, TRUNCATE: reported, never ignored


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "message": self.message}


def normalize_value(value: Any) -> Any:
    """The JSON-safe form of a database value, the same whether it came from a query or a log."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        total = int(value.total_seconds())
        sign = "-" if total < 0 else ""
        total = abs(total)
        return f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(value))
    if isinstance(value, (dict, list)):
        return json.loads(json.dumps(value, default=str))
    return str(value)
