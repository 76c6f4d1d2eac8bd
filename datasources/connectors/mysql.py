"""MySQL and MariaDB: catalog, checks, consistent snapshots and the binlog change stream.

Everything that differs between MariaDB and MySQL 8.0/8.4 lives in `MySQLDialect`, so the rest of
the code never asks which server it talks to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import ER

from .base import (
    Change,
    ChangeBatch,
    CheckResult,
    Column,
    ConnectorError,
    TableInfo,
    Unavailable,
    borrow_or_open,
    key_match_sql,
    normalize_value,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5
SERVER_ID_BASE = 0x5A000000  # binlog client ids must be unique per replica connection
ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236


def quote_ident(name: str) -> str:
    """Quote an identifier that was already validated against the catalog."""
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class MySQLDialect:
    """The differences between MariaDB and MySQL, in one place."""

    is_mariadb: bool
    version: tuple[int, int, int]

    @classmethod
    def from_version_string(cls, version: str) -> MySQLDialect:
        numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
        parsed = tuple(int(n) for n in numbers.groups()) if numbers else (0, 0, 0)
        return cls(is_mariadb="mariadb" in version.lower(), version=parsed)  # type: ignore[arg-type]

    @property
    def binlog_status_sql(self) -> str:
        # MySQL 8.4 removed SHOW MASTER STATUS; MariaDB keeps it (and adds SHOW BINLOG STATUS).
        if not self.is_mariadb and self.version >= (8, 4, 0):
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"

    @property
    def replication_client_privileges(self) -> tuple[str, ...]:
        # MariaDB 10.5 split REPLICATION CLIENT; BINLOG MONITOR is the new name of what we need.
        if self.is_mariadb and self.version >= (10, 5, 0):
            return ("BINLOG MONITOR", "REPLICATION CLIENT")
        return ("REPLICATION CLIENT",)

    @property
    def replication_slave_privileges(self) -> tuple[str, ...]:
        return ("REPLICATION SLAVE", "REPLICATION REPLICA")

    def snapshot_position_sql(self) -> list[str]:
        """Statements run right after START TRANSACTION WITH CONSISTENT SNAPSHOT.

        MariaDB reports the binlog position of the snapshot itself. MySQL has no such status
        variables: the position is read *before* the snapshot starts (see `note_position_first`)
        and the stream replays the few changes in between, harmless because writes are idempotent.
        """
        if self.is_mariadb:
            return ["SHOW STATUS LIKE 'binlog_snapshot_%'"]
        return []

    @property
    def note_position_first(self) -> bool:
        return not self.is_mariadb

    def position_from_status(self, rows: dict[str, Any], gtid: str | None = None) -> dict:
        if self.is_mariadb:
            return {"gtid": gtid or ""}
        return {"file": rows["File"], "pos": int(rows["Position"])}

    def stream_kwargs(self, position: dict) -> dict:
        """Arguments for `BinLogStreamReader` that resume exactly at `position`.

        With is_mariadb=True the library ignores file/pos, so MariaDB resumes by GTID; MySQL
        resumes by file/pos, which requires resume_stream=True or log_pos is ignored.
        """
        if self.is_mariadb:
            return {"is_mariadb": True, "auto_position": position.get("gtid") or None}
        return {"resume_stream": True, "log_file": position["file"], "log_pos": int(position["pos"])}


class MySQLSource:
    """A connection recipe for one MySQL/MariaDB database."""

    def __init__(self, *, host: str, port: int, user: str, password: str, database: str) -> None:
        self.host, self.port, self.user, self.password, self.database = host, port, user, password, database
        self._dialect: MySQLDialect | None = None

    @classmethod
    def from_model(cls, source) -> MySQLSource:
        return cls(
            host=source.host, port=source.port, user=source.user,
            password=source.get_password(), database=source.database,
        )

    # -- connections -------------------------------------------------------------------------

    def connect(self, *, read_timeout: float | None = 600) -> pymysql.connections.Connection:
        try:
            conn = pymysql.connect(
                host=self.host, port=self.port, user=self.user, password=self.password,
                database=self.database, charset="utf8mb4", autocommit=True,
                connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout,
            )
        except pymysql.err.OperationalError as exc:
            unreachable = exc.args and exc.args[0] in (2002, 2003, 2006, 2013)
            raise (Unavailable if unreachable else ConnectorError)(self.explain_connect_error(exc)) from None
        except (pymysql.err.MySQLError, OSError) as exc:  # e.g. the port belongs to another kind of server
            raise ConnectorError(
                f"{self.host}:{self.port} did not answer like a MySQL/MariaDB server ({exc})."
            ) from None
        with conn.cursor() as cur:
            # TIMESTAMP values come out of the binlog as naive UTC: read them the same way.
            cur.execute("SET time_zone = '+00:00'")
        return conn

    def explain_connect_error(self, exc: pymysql.err.OperationalError) -> str:
        code = exc.args[0] if exc.args else None
        where = f"{self.host}:{self.port}"
        if code == ER.ACCESS_DENIED_ERROR:
            return f"Access denied for user {self.user!r} at {where}: wrong user name or password."
        if code == ER.BAD_DB_ERROR:
            return f"Database {self.database!r} does not exist on {where}."
        if code == ER.DBACCESS_DENIED_ERROR:
            return (
                f"User {self.user!r} has no access to database {self.database!r} on {where}: "
                f"grant it SELECT ON {quote_ident(self.database)}.*."
            )
        if code in (2003, 2002):
            detail = str(exc.args[1]).lower() if len(exc.args) > 1 else ""
            if "refused" in detail:
                reason = "connection refused: nothing listens on that port"
            elif "timed out" in detail:
                reason = "timed out"
            elif any(text in detail for text in (  # how getaddrinfo failures read, per C library
                "name or service not known", "nodename nor servname", "no address associated",
                "temporary failure in name resolution", "getaddrinfo failed", "name does not resolve",
            )):
                reason = f"host name {self.host!r} not found"
            else:
                reason = "no answer"
            return f"Cannot reach the database server at {where} ({reason})."
        return f"Cannot connect to {where}: {exc.args[-1] if exc.args else exc}"

    def dialect(self, conn=None) -> MySQLDialect:
        if self._dialect is None:
            with borrow_or_open(conn, self.connect) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT VERSION()")
                    self._dialect = MySQLDialect.from_version_string(cur.fetchone()[0])
        return self._dialect

    # -- catalog -----------------------------------------------------------------------------

    def list_tables(self) -> list[str]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT TABLE_NAME FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    (self.database,),
                )
                return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()

    def describe_table(self, table: str, conn=None) -> TableInfo | None:
        with borrow_or_open(conn, self.connect) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH "
                    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "ORDER BY ORDINAL_POSITION",
                    (self.database, table),
                )
                columns = [
                    Column(name=n, data_type=t.lower(), nullable=nl == "YES", max_length=ml)
                    for n, t, nl, ml in cur.fetchall()
                ]
                if not columns:
                    return None
                cur.execute(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
                    "ORDER BY ORDINAL_POSITION",
                    (self.database, table),
                )
                primary_key = [row[0] for row in cur.fetchall()]
            return TableInfo(name=table, columns=columns, primary_key=primary_key)

    def count_rows(self, table: TableInfo, conn=None) -> int:
        with borrow_or_open(conn, self.connect) as conn:
            with conn.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {quote_ident(table.name)}")
                return int(cur.fetchone()[0])

    # -- checks ------------------------------------------------------------------------------

    def check(
        self,
        *,
        table: str | None = None,
        required_columns: dict[str, list[str]] | None = None,
        task_id: int | None = None,
    ) -> list[CheckResult]:
        """Everything that must hold before a sync can run, each with its own message.

        `required_columns` maps a purpose ("text template", "payload") to the column names it uses.
        `task_id` (the task being checked) matters to sources with per-task server state; not here.
        """
        results: list[CheckResult] = []
        try:
            conn = self.connect(read_timeout=30)
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        try:
            dialect = self.dialect(conn)
            kind = "MariaDB" if dialect.is_mariadb else "MySQL"
            results.append(CheckResult(
                "connect", True, f"Connected to {kind} {'.'.join(map(str, dialect.version))}."
            ))
            results.extend(self._check_privileges(conn, dialect, table))
            results.extend(self._check_binlog_settings(conn))
            if table:
                results.extend(self._check_table(conn, table, required_columns or {}))
        finally:
            conn.close()
        return results

    def _check_privileges(self, conn, dialect: MySQLDialect, table: str | None) -> list[CheckResult]:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            current = cur.fetchone()[0]
            user, _, host = current.rpartition("@")
            account = f"'{user}'@'{host}'"
            cur.execute(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s",
                (account,),
            )
            granted = {row[0].upper() for row in cur.fetchall()}
        missing = []
        # SUPER does not include REPLICATION SLAVE: without it the server refuses the binlog dump.
        if not granted & set(dialect.replication_slave_privileges):
            missing.append("REPLICATION SLAVE")
        if not granted & {*dialect.replication_client_privileges, "SUPER"}:
            missing.append(dialect.replication_client_privileges[0])
        results = []
        if missing:
            results.append(CheckResult(
                "privileges", False,
                f"User {account} lacks {', '.join(missing)} (needed to read the binary log and its "
                f"position): run GRANT {', '.join(missing)} ON *.* TO {account}.",
            ))
        else:
            results.append(CheckResult("privileges", True, "Replication privileges granted."))
        if table:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT 1 FROM {quote_ident(table)} LIMIT 0")
            except pymysql.err.MySQLError as exc:
                code = exc.args[0]
                if code in (ER.TABLEACCESS_DENIED_ERROR, ER.COLUMNACCESS_DENIED_ERROR):
                    results.append(CheckResult(
                        "select", False,
                        f"User {account} lacks SELECT on {self.database}.{table}: "
                        f"run GRANT SELECT ON {quote_ident(self.database)}.* TO {account}.",
                    ))
                # a missing table is reported by the table check
            else:
                results.append(CheckResult("select", True, f"SELECT on {table} granted."))
        return results

    def _check_binlog_settings(self, conn) -> list[CheckResult]:
        with conn.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                "('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata')"
            )
            variables = {name: str(value).upper() for name, value in cur.fetchall()}
        expected = [
            ("log_bin", "ON", "start the server with --log-bin (changes are read from the binary log)"),
            ("binlog_format", "ROW", "set binlog_format=ROW (row events carry the changed rows)"),
            ("binlog_row_image", "FULL", "set binlog_row_image=FULL (updates must carry every column)"),
            (
                "binlog_row_metadata", "FULL",
                "set binlog_row_metadata=FULL (without it column names are unknown in the log)",
            ),
        ]
        results = []
        for name, want, advice in expected:
            have = variables.get(name)
            if have is None:
                results.append(CheckResult(name, False, f"{name} is not supported by this server version; {advice}."))
            elif have != want:
                results.append(CheckResult(name, False, f"{name} is {have}, must be {want}: {advice}."))
            else:
                results.append(CheckResult(name, True, f"{name} = {want}."))
        return results

    def _check_table(self, conn, table: str, required: dict[str, list[str]]) -> list[CheckResult]:
        info = self.describe_table(table, conn)
        if info is None:
            # information_schema hides tables the user has no privilege on: ask the table itself.
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT 1 FROM {quote_ident(table)} LIMIT 0")
                code = None
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
            if code in (ER.TABLEACCESS_DENIED_ERROR, ER.COLUMNACCESS_DENIED_ERROR):
                return [CheckResult(
                    "table", False,
                    f"Cannot see table {table!r} in database {self.database!r}: without SELECT on it, "
                    f"whether it exists and which columns it has cannot be checked.",
                )]
            return [CheckResult("table", False, f"Table {table!r} does not exist in database {self.database!r}.")]
        results = [CheckResult("table", True, f"Table {table} has {len(info.columns)} columns.")]
        if not info.primary_key:
            results.append(CheckResult(
                "primary_key", False,
                f"Table {table!r} has no primary key: rows could not be matched to vectors; add one.",
            ))
        else:
            results.append(CheckResult("primary_key", True, f"Primary key: {', '.join(info.primary_key)}."))
        names = {c.name for c in info.columns}
        for purpose, columns in required.items():
            unknown = [c for c in columns if c not in names]
            if unknown:
                results.append(CheckResult(
                    purpose.replace(" ", "_"), False,
                    f"The {purpose} names column{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(repr(c) for c in unknown)} that {table!r} does not have "
                    f"(it has: {', '.join(sorted(names))}).",
                ))
        return results

    # -- snapshot ----------------------------------------------------------------------------

    def current_position(self, conn=None, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        """Where the binary log ends now: the start of an incremental-only sync.

        `table` and `task_id` (the stream that starts here) matter to sources that keep state on
        the server for a stream; the binary log needs none."""
        with borrow_or_open(conn, self.connect) as conn:
            dialect = self.dialect(conn)
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                if dialect.is_mariadb:
                    cur.execute("SELECT @@GLOBAL.gtid_binlog_pos AS gtid")
                    return {"gtid": cur.fetchone()["gtid"] or ""}
                cur.execute(dialect.binlog_status_sql)
                return dialect.position_from_status(cur.fetchone())

    def begin_snapshot(self, conn, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        """Open a consistent snapshot on `conn` and return the binlog position it corresponds to
        (or precedes). Reads on `conn` until COMMIT see exactly that state.

        `table` and `task_id` name the stream that follows, if any (unused: see current_position)."""
        dialect = self.dialect(conn)
        noted = self.current_position(conn) if dialect.note_position_first else None
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            if noted is not None:
                return noted
            status = {}
            for sql in dialect.snapshot_position_sql():
                cur.execute(sql)
                status.update({name.lower(): value for name, value in cur.fetchall()})
            cur.execute(
                "SELECT BINLOG_GTID_POS(%s, %s)",
                (status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])),
            )
            return dialect.position_from_status(status, gtid=cur.fetchone()[0])

    def read_chunk(
        self, conn, table: TableInfo, *, after_key: list | None, limit: int
    ) -> list[dict[str, Any]]:
        """The next `limit` rows in primary-key order after `after_key` (keyset pagination)."""
        columns = ", ".join(quote_ident(c.name) for c in table.columns)
        key_cols = [quote_ident(k) for k in table.primary_key]
        order = ", ".join(key_cols)
        sql = f"SELECT {columns} FROM {quote_ident(table.name)}"
        params: list[Any] = []
        if after_key is not None:
            if len(key_cols) == 1:
                sql += f" WHERE {key_cols[0]} > %s"
            else:
                sql += f" WHERE ({order}) > ({', '.join(['%s'] * len(key_cols))})"
            params.extend(after_key)
        sql += f" ORDER BY {order} LIMIT %s"
        params.append(limit)
        names = [c.name for c in table.columns]
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def read_keys(self, conn, table: TableInfo, keys: list[list]) -> list[dict[str, Any]]:
        """The rows with these primary keys as they are now (missing keys are simply absent)."""
        if not keys:
            return []
        columns = ", ".join(quote_ident(c.name) for c in table.columns)
        where = key_match_sql([quote_ident(k) for k in table.primary_key], len(keys))
        names = [c.name for c in table.columns]
        with conn.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {quote_ident(table.name)} WHERE {where}",
                        [value for key in keys for value in key])
            return [dict(zip(names, row)) for row in cur.fetchall()]

    # -- change stream -----------------------------------------------------------------------

    def change_stream(
        self, table: TableInfo, position: dict, *, task_id: int, heartbeat: float, read_timeout: float,
        max_rows: int = 1000,
    ) -> BinlogChangeStream:
        return BinlogChangeStream(
            self, table, position, server_id=SERVER_ID_BASE + task_id, heartbeat=heartbeat,
            read_timeout=read_timeout, max_rows=max_rows,
        )


class BinlogChangeStream:
    """Row changes of one table from the binary log, cut at transaction boundaries.

    Each yielded `ChangeBatch` either ends a transaction (its `position` resumes right after it),
    or is a slice of a large transaction (`position` None: not a place to checkpoint), or is a
    heartbeat with no changes (position unchanged), which lets the caller look at its stop flag.
    """

    def __init__(
        self, source: MySQLSource, table: TableInfo, position: dict, *, server_id: int,
        heartbeat: float, read_timeout: float, max_rows: int,
    ) -> None:
        self.source, self.table = source, table
        self.position = dict(position)
        self.server_id, self.heartbeat, self.read_timeout = server_id, heartbeat, read_timeout
        self.max_rows = max_rows
        self.dialect = source.dialect()
        self._reader = None
        self._gtid_domains = self._parse_gtid_state(position.get("gtid", "")) if self.dialect.is_mariadb else {}

    @staticmethod
    def _parse_gtid_state(state: str) -> dict[str, str]:
        domains = {}
        for gtid in filter(None, (part.strip() for part in (state or "").split(","))):
            domains[gtid.split("-", 1)[0]] = gtid
        return domains

    def _open(self):
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        settings = {
            "host": self.source.host, "port": self.source.port, "user": self.source.user,
            "passwd": self.source.password, "connect_timeout": CONNECT_TIMEOUT,
            # A half-open socket must not hang us: the server sends heartbeats every
            # `heartbeat` seconds, so a read that waits longer than this has lost the server.
            "read_timeout": self.read_timeout,
        }
        return BinLogStreamReader(
            connection_settings=settings,
            server_id=self.server_id,
            blocking=True,
            slave_heartbeat=self.heartbeat,
            only_events=[
                WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent,
                MariadbGtidEvent, GtidEvent, RotateEvent, HeartbeatLogEvent,
            ],
            only_schemas=None,
            freeze_schema=True,
            **self.dialect.stream_kwargs(self.position),
        )

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # closing a broken socket may fail; nothing is lost
                logger.debug("closing binlog reader failed", exc_info=True)
            self._reader = None

    def acknowledge(self, position: dict) -> None:
        """The runner committed `position`. Nothing to tell the server: the binary log is kept by
        its own retention settings, not by what replicas have read."""

    def _commit_position(self, event) -> dict:
        if self.dialect.is_mariadb:
            return {"gtid": ",".join(self._gtid_domains[d] for d in sorted(self._gtid_domains))}
        return {"file": self._reader.log_file, "pos": int(event.packet.log_pos)}

    def _mentions_table(self, query: str) -> bool:
        pattern = r"(^|[\s.`])" + re.escape(self.table.name) + r"($|[\s`(;])"
        return re.search(pattern, query, flags=re.IGNORECASE) is not None

    def __iter__(self) -> Iterator[ChangeBatch]:
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        self._reader = self._open()
        pending = ChangeBatch()
        pending_gtid: str | None = None
        key_cols = self.table.primary_key
        schema, table_name = self.source.database, self.table.name

        def key_of(row: dict) -> tuple:
            return tuple(normalize_value(row.get(k)) for k in key_cols)

        try:
            for event in self._reader:
                if isinstance(event, HeartbeatLogEvent):
                    if not pending.changes:
                        yield ChangeBatch(position=None)
                    continue
                if isinstance(event, RotateEvent):
                    continue
                if isinstance(event, (MariadbGtidEvent, GtidEvent)):
                    pending_gtid = getattr(event, "gtid", None)
                    continue
                if isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                    if event.schema != schema or event.table != table_name:
                        continue
                    stamp = float(event.timestamp)
                    for row in event.rows:
                        if isinstance(event, WriteRowsEvent):
                            values = row["values"]
                            pending.changes.append(Change("upsert", key_of(values), values, timestamp=stamp))
                        elif isinstance(event, DeleteRowsEvent):
                            values = row["values"]
                            pending.changes.append(Change("delete", key_of(values), values, timestamp=stamp))
                        else:
                            before, after = row["before_values"], row["after_values"]
                            old_key, new_key = key_of(before), key_of(after)
                            if old_key != new_key:  # a primary-key change: delete old, insert new
                                pending.changes.append(Change("delete", old_key, before, timestamp=stamp))
                                pending.changes.append(Change("upsert", new_key, after, timestamp=stamp))
                            else:
                                pending.changes.append(
                                    Change("upsert", new_key, after, before=before, timestamp=stamp)
                                )
                    if len(pending.changes) >= self.max_rows:
                        # A big transaction is written in slices; it is checkpointed only at its end.
                        yield pending
                        pending = ChangeBatch()
                    continue
                ends_transaction = False
                if isinstance(event, XidEvent):
                    ends_transaction = True
                elif isinstance(event, QueryEvent):
                    query = event.query.strip() if isinstance(event.query, str) else event.query.decode()
                    upper = query.upper()
                    if upper == "BEGIN":
                        continue
                    ends_transaction = True
                    current_db = event.schema
                    if isinstance(current_db, bytes):
                        current_db = current_db.decode()
                    same_db = current_db == schema or f"{schema}." in query or f"`{schema}`." in query
                    if upper != "COMMIT" and same_db and self._mentions_table(query):
                        stamp = float(event.timestamp)
                        if upper.startswith("TRUNCATE"):
                            pending.changes.append(Change("truncate", (), {}, timestamp=stamp))
                            pending.notices.append(f"TRUNCATE of {table_name}: every vector was deleted.")
                        else:
                            pending.notices.append(f"DDL on {table_name}: {query[:500]}")
                if ends_transaction:
                    if self.dialect.is_mariadb and pending_gtid:
                        self._gtid_domains[pending_gtid.split("-", 1)[0]] = pending_gtid
                    pending_gtid = None
                    pending.position = self._commit_position(event)
                    self.position = pending.position
                    if self.dialect.is_mariadb:
                        # On a reconnect the library replays from auto_position: keep it current.
                        self._reader.auto_position = pending.position["gtid"] or None
                    else:
                        self._reader.log_file = pending.position["file"]
                        self._reader.log_pos = pending.position["pos"]
                    yield pending
                    pending = ChangeBatch()
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] == ER_MASTER_FATAL_ERROR_READING_BINLOG:
                # The position was purged from the server (or never existed): replaying is
                # impossible, only a new snapshot brings the target back in step.
                raise ConnectorError(
                    f"The binary log no longer holds position {self.position} ({exc.args[-1]}): "
                    "re-snapshot the task, and keep binlogs longer (binlog_expire_logs_seconds)."
                ) from exc
            if not isinstance(exc, pymysql.err.OperationalError):
                raise
            where = f"{self.source.host}:{self.source.port}"
            raise Unavailable(f"Lost the binary log stream from {where}: {exc.args[-1]}") from exc
        finally:
            self.close()

