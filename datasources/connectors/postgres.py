"""PostgreSQL: catalog, checks, snapshots exported by a logical replication slot, and the pgoutput
change stream.

One task owns one publication (of its one table, never FOR ALL TABLES) and one logical slot,
both named after the task (`replication_name`). The snapshot is read inside the snapshot the slot
exported when it was created, so the stream starts exactly where the snapshot ends: no gap, no
overlap. The slot only forgets WAL the runner acknowledged (`PgOutputStream.acknowledge`), i.e.
after the store wrote the rows and the checkpoint was committed: a slot cannot be rewound.
"""

from __future__ import annotations

import logging
import select
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import psycopg2.extras

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
# Every session reads and writes values the same way, so a value read by a query during the
# snapshot and the same value rendered as text by pgoutput (in the walsender session) are
# identical: timestamptz in UTC (normalize_value drops the zone, like MySQL's UTC session), ISO
# dates, shortest exact floats.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"
PG_EPOCH = 946_684_800  # pgoutput timestamps count microseconds from 2000-01-01
FIRST_USER_OID = 16384  # types below this are built in: psycopg2 knows how to read them
UNCHANGED = object()  # a TOASTed value the update did not touch: pgoutput does not send it
FETCH_CHUNK = 500


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    """`docs` or `schema.docs`, quoted (an unqualified name is looked up on the search_path)."""
    schema, dot, name = table.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if dot else quote_ident(table)


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def replication_name(task_id: int) -> str:
    """The slot and publication of a task. The prefix setting keeps two installations that sync
    from the same server apart (slots are per cluster, task ids are per installation)."""
    from django.conf import settings

    prefix = getattr(settings, "RSYNC_REPLICATION_PREFIX", "rsync_task")
    return f"{prefix}_{int(task_id)}"


def _python(value: Any) -> Any:
    # psycopg2 reads bytea as memoryview, which normalize_value would print as "<memory at ...>".
    return bytes(value) if isinstance(value, memoryview) else value


@dataclass(frozen=True)
class SlotInfo:
    name: str
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: str | None
    wal_status: str | None
    retained_bytes: int | None
    safe_wal_size: int | None


class PostgresSource:
    """A connection recipe for one PostgreSQL database."""

    kind = "postgresql"

    def __init__(self, *, host: str, port: int, user: str, password: str, database: str) -> None:
        self.host, self.port, self.user, self.password, self.database = host, port, user, password, database

    @classmethod
    def from_model(cls, source) -> PostgresSource:
        return cls(
            host=source.host, port=source.port, user=source.user,
            password=source.get_password(), database=source.database,
        )

    # -- connections -------------------------------------------------------------------------

    def _params(self) -> dict:
        return {
            "host": self.host, "port": self.port, "user": self.user, "password": self.password,
            "dbname": self.database, "connect_timeout": CONNECT_TIMEOUT, "application_name": "data-rsync",
            "options": SESSION_OPTIONS, "client_encoding": "UTF8",
            # A half-open socket must not hang a snapshot or a stream forever.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
        }

    def connect(self):
        """An autocommit connection for catalog queries, checks and snapshots."""
        try:
            conn = psycopg2.connect(**self._params())
        except psycopg2.OperationalError as exc:
            raise self._connect_error(exc) from None
        conn.autocommit = True
        return conn

    def connect_replication(self):
        """A walsender connection (replication=database): slots and the pgoutput stream."""
        try:
            return psycopg2.connect(
                **self._params(), connection_factory=psycopg2.extras.LogicalReplicationConnection
            )
        except psycopg2.OperationalError as exc:
            raise self._connect_error(exc, replication=True) from None

    def _connect_error(self, exc: psycopg2.OperationalError, *, replication: bool = False) -> ConnectorError:
        text = str(exc).strip()
        detail = text.split("FATAL:", 1)[-1].strip()
        lower = text.lower()
        where = f"{self.host}:{self.port}"
        if "password authentication failed" in lower or ("role" in lower and "does not exist" in lower):
            return ConnectorError(f"Access denied for user {self.user!r} at {where}: wrong user name or password.")
        if "database" in lower and "does not exist" in lower:
            return ConnectorError(f"Database {self.database!r} does not exist on {where}.")
        if "must be superuser or replication role" in lower:
            return ConnectorError(
                f"User {self.user!r} may not open a replication connection to {where}: "
                f"ALTER ROLE {quote_ident(self.user)} REPLICATION."
            )
        if "no pg_hba.conf entry" in lower:
            what = "replication connections" if replication else "connections"
            return ConnectorError(
                f"The server at {where} refuses {what} from this host for user {self.user!r} to database "
                f"{self.database!r}: add a matching line to its pg_hba.conf ({detail})."
            )
        if "exceeds max_wal_senders" in lower or "max_wal_senders" in lower:
            return Unavailable(f"No free WAL sender on {where}: raise max_wal_senders ({detail}).")
        reasons = (
            ("connection refused", "connection refused: nothing listens on that port"),
            ("could not translate host name", f"host name {self.host!r} not found"),
            ("timeout expired", "timed out"),
            ("the database system is starting up", "the server is starting up"),
            ("the database system is shutting down", "the server is shutting down"),
            ("the database system is in recovery mode", "the server is recovering"),
            ("too many clients", "too many connections"),
            ("server closed the connection", "the server closed the connection"),
            ("no route to host", "no route to host"),
            ("network is unreachable", "network is unreachable"),
        )
        for needle, reason in reasons:
            if needle in lower:
                return Unavailable(f"Cannot reach the database server at {where} ({reason}).")
        return ConnectorError(f"Cannot connect to {where}: {detail}")

    # -- catalog -----------------------------------------------------------------------------

    def list_tables(self) -> list[str]:
        """Tables of the current schema by name, tables of other schemas as schema.table."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT CASE WHEN table_schema = current_schema() THEN table_name "
                    "ELSE table_schema || '.' || table_name END FROM information_schema.tables "
                    "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
                    "ORDER BY table_schema <> current_schema(), 1"
                )
                return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()

    @staticmethod
    def _resolve(conn, table: str) -> tuple[int, str, str] | None:
        """(oid, schema, name) of `table`, or None when it does not exist."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')",
                (qualified(table),),
            )
            row = cur.fetchone()
        return (int(row[0]), row[1], row[2]) if row else None

    def describe_table(self, table: str, conn=None) -> TableInfo | None:
        with borrow_or_open(conn, self.connect) as conn:
            found = self._resolve(conn, table)
            if found is None:
                return None
            oid = found[0]
            with conn.cursor() as cur:
                # The catalog, not information_schema: the latter hides columns the user cannot
                # read, and names types "USER-DEFINED". A domain is described by its base type.
                cur.execute(
                    "SELECT a.attname, format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, "
                    "NULL), NOT a.attnotnull, CASE WHEN a.atttypmod > 4 AND a.atttypid IN (1042, 1043) "
                    "THEN a.atttypmod - 4 END FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    (oid,),
                )
                columns = [Column(name=n, data_type=t, nullable=nl, max_length=ml) for n, t, nl, ml in cur.fetchall()]
                cur.execute(
                    "SELECT a.attname FROM pg_index i "
                    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                    "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
                    (oid,),
                )
                primary_key = [row[0] for row in cur.fetchall()]
            return TableInfo(name=table, columns=columns, primary_key=primary_key)

    def count_rows(self, table: TableInfo, conn=None) -> int:
        with borrow_or_open(conn, self.connect) as conn:
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {qualified(table.name)}")
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

        `task_id` names the task's own slot and publication: an existing slot does not need a
        free one, an existing publication needs no right to create it.
        """
        try:
            conn = self.connect()
        except ConnectorError as exc:
            return [CheckResult("connect", False, str(exc))]
        results: list[CheckResult] = []
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                version = cur.fetchone()[0].split()[0]
            results.append(CheckResult("connect", True, f"Connected to PostgreSQL {version}."))
            results.append(self._check_wal_level(conn))
            results.append(self._check_replication_role(conn))
            results.append(self._check_slots(conn, task_id))
            if table:
                results.extend(self._check_table(conn, table, required_columns or {}, task_id))
        except psycopg2.Error as exc:
            results.append(CheckResult("catalog", False, f"Cannot read the catalog: {str(exc).strip()}"))
        finally:
            conn.close()
        return results

    @staticmethod
    def _setting(conn, name: str) -> str:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting(%s)", (name,))
            return cur.fetchone()[0]

    def _check_wal_level(self, conn) -> CheckResult:
        level = self._setting(conn, "wal_level")
        if level != "logical":
            return CheckResult(
                "wal_level", False,
                f"wal_level is {level}, must be logical: ALTER SYSTEM SET wal_level = logical, then restart "
                "the server.",
            )
        return CheckResult("wal_level", True, "wal_level = logical.")

    def _check_replication_role(self, conn) -> CheckResult:
        with conn.cursor() as cur:
            cur.execute("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user")
            replication, superuser = cur.fetchone()
        if not (replication or superuser):
            return CheckResult(
                "replication", False,
                f"User {self.user!r} may not read the change stream: it needs the REPLICATION attribute "
                f"(ALTER ROLE {quote_ident(self.user)} REPLICATION) or superuser.",
            )
        # The attribute is not all: pg_hba.conf and max_wal_senders must let the connection in.
        try:
            self.connect_replication().close()
        except ConnectorError as exc:
            return CheckResult("replication", False, f"The replication connection fails: {exc}")
        return CheckResult(
            "replication", True, "Superuser." if superuser else f"User {self.user!r} has the REPLICATION attribute."
        )

    def _check_slots(self, conn, task_id: int | None) -> CheckResult:
        maximum = int(self._setting(conn, "max_replication_slots"))
        own = replication_name(task_id) if task_id is not None else None
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(*) FILTER (WHERE slot_name = %s) FROM pg_replication_slots", (own,))
            used, mine = cur.fetchone()
        if mine:
            return CheckResult("replication_slots", True, f"Replication slot {own} exists ({used} of {maximum} used).")
        if used >= maximum:
            return CheckResult(
                "replication_slots", False,
                f"All {maximum} replication slots are in use (max_replication_slots = {maximum}): drop unused "
                "slots (see pg_replication_slots) or raise max_replication_slots and restart the server.",
            )
        return CheckResult("replication_slots", True, f"{used} of {maximum} replication slots in use.")

    def _check_table(
        self, conn, table: str, required: dict[str, list[str]], task_id: int | None
    ) -> list[CheckResult]:
        found = self._resolve(conn, table)
        if found is None:
            return [CheckResult("table", False, f"Table {table!r} does not exist in database {self.database!r}.")]
        oid, schema, name = found
        info = self.describe_table(table, conn)
        results = [CheckResult("table", True, f"Table {table} has {len(info.columns)} columns.")]
        with conn.cursor() as cur:
            cur.execute(
                "SELECT has_table_privilege(%s, 'SELECT'), c.relreplident, pg_has_role(c.relowner, 'USAGE'), "
                "has_database_privilege(current_database(), 'CREATE'), r.rolsuper, "
                "(SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), "
                "(SELECT array_agg(a.attname::text) FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum) "
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                " WHERE i.indrelid = c.oid AND i.indisreplident) "
                "FROM pg_class c, pg_roles r WHERE c.oid = %s AND r.rolname = current_user",
                (oid, oid),
            )
            can_select, identity, owner, can_create, superuser, identity_index, identity_columns = cur.fetchone()
        if can_select:
            results.append(CheckResult("select", True, f"User {self.user!r} can read {table}."))
        else:
            results.append(CheckResult(
                "select", False,
                f"User {self.user!r} cannot read table {table!r}: GRANT SELECT ON {qualified(table)} "
                f"TO {quote_ident(self.user)}.",
            ))
        if info.primary_key:
            results.append(CheckResult("primary_key", True, f"Primary key: {', '.join(info.primary_key)}."))
        else:
            results.append(CheckResult(
                "primary_key", False,
                f"Table {table!r} has no primary key: rows could not be matched to vectors; add one.",
            ))
        results.append(self._replica_identity_result(table, identity, info.primary_key, identity_index,
                                                     identity_columns or []))
        results.append(self._publication_result(conn, table, oid, task_id, owner, can_create, superuser))
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

    @staticmethod
    def _replica_identity_result(
        table: str, identity: str, primary_key: list[str], index: str | None, index_columns: list[str]
    ) -> CheckResult:
        """Updates and deletes reach the stream with the replica identity as their key: it must
        contain the primary key, which is how rows are matched to vectors."""
        fix_full = f"ALTER TABLE {qualified(table)} REPLICA IDENTITY FULL"
        if identity == "f":
            return CheckResult(
                "replica_identity", True,
                "REPLICA IDENTITY FULL: updates and deletes carry the whole old row (more WAL than DEFAULT).",
            )
        if identity == "n":
            return CheckResult(
                "replica_identity", False,
                f"Table {table!r} has REPLICA IDENTITY NOTHING: deleted rows and key changes would reach the stream "
                f"without their key. Run ALTER TABLE {qualified(table)} REPLICA IDENTITY DEFAULT (it has a primary "
                f"key) or {fix_full}." if primary_key else
                f"Table {table!r} has REPLICA IDENTITY NOTHING and no primary key: deleted rows would reach the "
                f"stream without their key. Add a primary key, or run {fix_full}.",
            )
        if identity == "i":
            missing = [k for k in primary_key if k not in index_columns]
            if missing:
                return CheckResult(
                    "replica_identity", False,
                    f"Table {table!r} uses REPLICA IDENTITY USING INDEX {index}, which lacks the primary key "
                    f"column(s) {', '.join(missing)}: deleted rows could not be matched to vectors. Run "
                    f"ALTER TABLE {qualified(table)} REPLICA IDENTITY DEFAULT.",
                )
            return CheckResult("replica_identity", True, f"REPLICA IDENTITY USING INDEX {index}.")
        if not primary_key:
            return CheckResult(
                "replica_identity", False,
                f"Table {table!r} has no primary key, so with REPLICA IDENTITY DEFAULT PostgreSQL cannot publish "
                f"its updates and deletes (and refuses them once the table is published). Add a primary key, "
                f"or run {fix_full}.",
            )
        return CheckResult(
            "replica_identity", True, "REPLICA IDENTITY DEFAULT: updates and deletes are keyed by the primary key."
        )

    def _publication_result(
        self, conn, table: str, oid: int, task_id: int | None, owner: bool, can_create: bool, superuser: bool
    ) -> CheckResult:
        name = replication_name(task_id) if task_id is not None else None
        if name is not None and self._publication_tables(conn, name) == [oid]:
            return CheckResult("publication", True, f"Publication {name} publishes {table}.")
        if superuser:
            return CheckResult("publication", True, "Superuser: may create the task's publication.")
        label = name or "rsync_task_<id>"
        problems = []
        if not can_create:
            problems.append(
                f"cannot create publications in database {self.database!r} "
                f"(GRANT CREATE ON DATABASE {quote_ident(self.database)} TO {quote_ident(self.user)})"
            )
        if not owner:
            problems.append(
                f"does not own table {table!r}, and only its owner may publish it "
                f"(ALTER TABLE {qualified(table)} OWNER TO {quote_ident(self.user)})"
            )
        if problems:
            return CheckResult(
                "publication", False,
                f"User {self.user!r} {' and '.join(problems)}; or have an administrator run "
                f"CREATE PUBLICATION {label} FOR TABLE {qualified(table)}.",
            )
        return CheckResult("publication", True, f"User {self.user!r} may create the task's publication.")

    # -- the task's publication and slot -----------------------------------------------------

    @staticmethod
    def _publication_tables(conn, name: str) -> list[int] | None:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT p.puballtables, array_remove(array_agg(r.prrelid::oid), NULL) FROM pg_publication p "
                "LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid WHERE p.pubname = %s GROUP BY p.puballtables",
                (name,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return [-1] if row[0] else sorted(int(oid) for oid in row[1])

    def ensure_publication(self, conn, table: str, task_id: int) -> str:
        """The task's publication of exactly its table (created, or corrected if the task's table changed).

        It must exist before the slot: pgoutput looks publications up as of the WAL it decodes.
        """
        name = replication_name(task_id)
        found = self._resolve(conn, table)
        if found is None:
            raise ConnectorError(f"Table {table!r} does not exist in database {self.database!r}.")
        tables = self._publication_tables(conn, name)
        try:
            with conn.cursor() as cur:
                if tables is None:
                    cur.execute(f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {qualified(table)}")
                elif tables != [found[0]]:
                    cur.execute(f"ALTER PUBLICATION {quote_ident(name)} SET TABLE {qualified(table)}")
        except psycopg2.Error as exc:
            raise ConnectorError(
                f"Cannot create publication {name} for table {table!r}: {str(exc).strip()} "
                "(the user needs CREATE on the database and must own the table)."
            ) from None
        return name

    @staticmethod
    def _slot(conn, name: str) -> SlotInfo | None:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT slot_name, active, active_pid, confirmed_flush_lsn::text, wal_status, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, safe_wal_size "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (name,),
            )
            row = cur.fetchone()
        return SlotInfo(*row) if row else None

    def _create_slot(self, name: str, *, export: bool):
        """Create the slot; with `export`, return the open replication connection and the slot's
        row (slot_name, consistent_point, snapshot_name, output_plugin): the exported snapshot
        lives only until that connection runs another command or closes."""
        repl = self.connect_replication()
        try:
            with_snapshot = "EXPORT_SNAPSHOT" if export else "NOEXPORT_SNAPSHOT"
            cur = repl.cursor()
            cur.execute(f"CREATE_REPLICATION_SLOT {quote_ident(name)} LOGICAL pgoutput {with_snapshot}")
            row = cur.fetchone()
        except psycopg2.Error as exc:
            repl.close()
            if isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None:
                raise Unavailable(f"Lost {self.host}:{self.port} while creating slot {name}: {exc}") from None
            raise ConnectorError(f"Cannot create replication slot {name}: {str(exc).strip()}") from None
        if not export:
            repl.close()
            return None, row
        return repl, row

    def slot_status(self, task_id: int) -> SlotInfo | None:
        """The task's slot as the server sees it (None when there is none): whether a runner reads
        it, and how much WAL it keeps the server from recycling."""
        conn = self.connect()
        try:
            return self._slot(conn, replication_name(task_id))
        finally:
            conn.close()

    def drop_replication(self, task) -> None:
        """Drop the slot and publication of `task` (a task or its id): a slot left behind keeps
        WAL on the server forever."""
        name = replication_name(task if isinstance(task, int) else task.pk)
        try:
            conn = self.connect()
            try:
                slot = self._slot(conn, name)
                if slot is not None:
                    self._drop_slot(conn, slot)
                with conn.cursor() as cur:
                    cur.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")
            finally:
                conn.close()
        except (psycopg2.Error, ConnectorError) as exc:
            raise (Unavailable if isinstance(exc, Unavailable) else ConnectorError)(
                f"Cannot drop replication slot and publication {name} on {self.host}:{self.port} "
                f"({str(exc).strip()}); drop them by hand once the server is back: "
                f"SELECT pg_drop_replication_slot('{name}'); DROP PUBLICATION {name};"
            ) from None

    def _drop_slot(self, conn, slot: SlotInfo, wait: float = 10.0) -> None:
        deadline = time.monotonic() + wait
        with conn.cursor() as cur:
            while True:
                if slot.active and slot.active_pid:
                    # Only a runner that died leaves an active slot behind (callers made sure no
                    # runner holds the task): its walsender has not noticed yet.
                    cur.execute("SELECT pg_terminate_backend(%s)", (slot.active_pid,))
                try:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot.name,))
                    return
                except psycopg2.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                    slot = self._slot(conn, slot.name)
                    if slot is None:
                        return

    # -- snapshot ----------------------------------------------------------------------------

    def current_position(
        self, conn=None, *, table: TableInfo | None = None, task_id: int | None = None
    ) -> dict:
        """Where the stream of task `task_id` on `table` starts now (an incremental-only sync): the
        task's slot is created here, so nothing committed from now on is missed. Without a task,
        just where the WAL ends."""
        with borrow_or_open(conn, self.connect) as conn:
            if task_id is None:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_current_wal_lsn()::text")
                    return {"lsn": cur.fetchone()[0], "slot": None}
            name, slot = self._prepare_replication(conn, table, task_id)
            if slot is not None:
                return {"lsn": slot.confirmed_flush_lsn, "slot": name}
            _, row = self._create_slot(name, export=False)
            return {"lsn": row[1], "slot": name}

    def _prepare_replication(self, conn, table: TableInfo | None, task_id: int) -> tuple[str, SlotInfo | None]:
        """The task's publication (created first: pgoutput looks it up as of the WAL it decodes)
        and its usable slot, if it has one."""
        if table is None:
            raise ValueError("a task's stream needs its table")
        name = self.ensure_publication(conn, table.name, task_id)
        slot = self._slot(conn, name)
        if slot is not None and slot.wal_status == "lost":
            # Invalidated by the server (max_slot_wal_keep_size): useless, and this new start
            # (a snapshot, or an incremental-only first run) is exactly what replaces it.
            self._drop_slot(conn, slot)
            slot = None
        return name, slot

    def begin_snapshot(self, conn, *, table: TableInfo | None = None, task_id: int | None = None) -> dict:
        """Open a REPEATABLE READ snapshot on `conn` and return the position the stream of task
        `task_id` resumes from: exactly the snapshot when the task's slot is created here (the
        snapshot it exported), an earlier point when the slot already existed (a resumed or
        repeated snapshot then replays a little, which idempotent writes make harmless).

        Without a task no stream follows (mode "full"): no slot is kept (it would hold WAL
        forever), and the position says so (`slot` None), so no stream ever starts from it.
        """
        if task_id is None:
            position = self.current_position(conn)
            self._begin_repeatable_read(conn)
            return position
        name, slot = self._prepare_replication(conn, table, task_id)
        if slot is not None:
            self._begin_repeatable_read(conn)
            return {"lsn": slot.confirmed_flush_lsn, "slot": name}
        repl, row = self._create_slot(name, export=True)
        try:
            self._begin_repeatable_read(conn, snapshot=row[2])
        finally:
            repl.close()  # the importing transaction holds the snapshot from here on
        return {"lsn": row[1], "slot": name}

    @staticmethod
    def _begin_repeatable_read(conn, snapshot: str | None = None) -> None:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))

    def read_chunk(
        self, conn, table: TableInfo, *, after_key: list | None, limit: int
    ) -> list[dict[str, Any]]:
        """The next `limit` rows in primary-key order after `after_key` (keyset pagination)."""
        columns = ", ".join(quote_ident(c.name) for c in table.columns)
        key_cols = [quote_ident(k) for k in table.primary_key]
        order = ", ".join(key_cols)
        sql = f"SELECT {columns} FROM {qualified(table.name)}"
        params: list[Any] = []
        if after_key is not None:
            sql += f" WHERE ({order}) > ({', '.join(['%s'] * len(key_cols))})"
            params.extend(after_key)
        sql += f" ORDER BY {order} LIMIT %s"
        params.append(limit)
        names = [c.name for c in table.columns]
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return [{n: normalize_value(_python(v)) for n, v in zip(names, row)} for row in cur.fetchall()]

    def read_keys(self, conn, table: TableInfo, keys: list[list]) -> list[dict[str, Any]]:
        """The rows with these primary keys as they are now (missing keys are simply absent)."""
        if not keys:
            return []
        columns = ", ".join(quote_ident(c.name) for c in table.columns)
        where = key_match_sql([quote_ident(k) for k in table.primary_key], len(keys))
        names = [c.name for c in table.columns]
        with conn.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {qualified(table.name)} WHERE {where}",
                        [value for key in keys for value in key])
            return [{n: normalize_value(_python(v)) for n, v in zip(names, row)} for row in cur.fetchall()]

    # -- change stream -----------------------------------------------------------------------

    def change_stream(
        self, table: TableInfo, position: dict, *, task_id: int, heartbeat: float, read_timeout: float,
        max_rows: int = 1000,
    ) -> PgOutputStream:
        return PgOutputStream(
            self, table, position, task_id=task_id, heartbeat=heartbeat, read_timeout=read_timeout,
            max_rows=max_rows,
        )


# -- pgoutput, protocol version 1 ------------------------------------------------------------


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: list[tuple[str, int, bool]]  # (name, type oid, part of the replica identity)

    @property
    def identity_columns(self) -> list[str]:
        return [name for name, _, key in self.columns if key]


class _Reader:
    """Big-endian fields of one pgoutput message."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> bytes:
        self.pos += 1
        return self.data[self.pos - 1 : self.pos]

    def int(self, fmt: str) -> int:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def tuple(self) -> list[Any]:
        """Column values: None for NULL, UNCHANGED for an untouched TOAST value, else the text."""
        values: list[Any] = []
        for _ in range(self.int(">h")):
            kind = self.byte()
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED)
            elif kind == b"t":
                size = self.int(">i")
                values.append(self.data[self.pos : self.pos + size].decode("utf-8"))
                self.pos += size
            else:  # 'b' only comes with the binary option, which is never asked for
                raise ConnectorError(f"Unexpected pgoutput tuple value kind {kind!r}.")
        return values


@dataclass
class _Pending:
    """The changes of the transaction being read, and those still missing TOAST values."""

    batch: ChangeBatch = field(default_factory=ChangeBatch)
    unchanged: list[tuple[Change, list[str]]] = field(default_factory=list)


class PgOutputStream:
    """Row changes of one table from the task's logical slot, cut at transaction boundaries.

    Each yielded `ChangeBatch` either ends a transaction (its `position` is the commit's end
    LSN), or is a slice of a large transaction (`position` None), or is a heartbeat (no changes,
    position None). `acknowledge(position)` tells the server it may forget everything up to there.
    """

    def __init__(
        self, source: PostgresSource, table: TableInfo, position: dict, *, task_id: int, heartbeat: float,
        read_timeout: float, max_rows: int,
    ) -> None:
        self.source, self.table = source, table
        self.position = dict(position)
        self.name = replication_name(task_id)
        self.heartbeat, self.read_timeout, self.max_rows = heartbeat, read_timeout, max_rows
        self._lock = threading.Lock()  # guards _acknowledged
        self._io = threading.Lock()  # one thread at a time on the replication connection
        start = parse_lsn(position["lsn"])
        self._acknowledged = start  # written by acknowledge() in the runner's writer thread
        self._sent = start  # what the server was told (under _io)
        self._handed_out = start  # end of the last transaction yielded (reader thread only)
        self._reader_seen = time.monotonic()  # when the reader last used the connection
        self._keepalive_every = max(0.5, min(5.0, read_timeout / 2))
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None
        self._repl = None
        self._cursor = None
        self._conn = None  # a plain connection: unchanged TOAST values and user-defined types
        self._relations: dict[int, Relation] = {}
        self._base_types: dict[int, int] = {}
        self._ours: tuple[str, str] | None = None  # (schema, name) of the task's table

    # -- acknowledging (thread-safe) ---------------------------------------------------------

    def acknowledge(self, position: dict) -> None:
        """Called by the runner once `position` is in the store and in the committed checkpoint.

        Only records it (this runs in the writer thread): the reader sends it with its next read,
        or the keepalive thread while the reader waits for the pipeline."""
        lsn = parse_lsn(position["lsn"])
        with self._lock:
            self._acknowledged = max(self._acknowledged, lsn)

    def _confirmed(self) -> int:
        with self._lock:
            return self._acknowledged

    def _send_acknowledgement(self) -> None:
        """Tell the server what the store has (call with _io held)."""
        confirmed = self._confirmed()
        if confirmed > self._sent:
            self._cursor.send_feedback(write_lsn=self._handed_out, flush_lsn=confirmed, force=True)
            self._sent = confirmed

    def _read_message(self):
        with self._io:
            self._reader_seen = time.monotonic()
            self._send_acknowledgement()
            return self._cursor.read_message()

    def _feedback(self, *, reply: bool = False) -> None:
        with self._io:
            self._reader_seen = time.monotonic()
            self._send_acknowledgement()
            self._cursor.send_feedback(reply=reply, force=True)

    def _keep_alive(self) -> None:
        """Talk to the server while the reader is suspended (the runner's queue is full because
        the model is slower than the stream): past wal_sender_timeout of silence the server drops
        the connection. Also passes on acknowledgements meanwhile, so the slot keeps advancing."""
        while not self._stopping.wait(self._keepalive_every):
            if time.monotonic() - self._reader_seen < self._keepalive_every:
                continue
            with self._io:
                if self._cursor is None:
                    return
                try:
                    self._send_acknowledgement()
                    self._cursor.send_feedback(force=True)
                except psycopg2.Error:
                    return  # the reader meets the broken connection itself

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> None:
        self._conn = self.source.connect()
        found = self.source._resolve(self._conn, self.table.name)
        if found is None:
            raise ConnectorError(f"Table {self.table.name!r} no longer exists in database {self.source.database!r}.")
        self._ours = (found[1], found[2])
        slot = self.source._slot(self._conn, self.name)
        resnapshot = "re-snapshot the task"
        if slot is None:
            if self.position.get("slot") is None:
                raise ConnectorError(
                    f"No replication slot kept the changes since this task's snapshot (it was taken for a "
                    f"snapshot-only run): {resnapshot} to start streaming."
                )
            raise ConnectorError(
                f"Replication slot {self.name} no longer exists on {self.source.host}:{self.source.port}, so "
                f"the changes since {self.position['lsn']} are gone: {resnapshot}."
            )
        if slot.wal_status == "lost":
            raise ConnectorError(
                f"Replication slot {self.name} was invalidated by the server (it kept more WAL than "
                f"max_slot_wal_keep_size allows): {resnapshot}."
            )
        if self.source._publication_tables(self._conn, self.name) is None:
            raise ConnectorError(f"Publication {self.name} was dropped: {resnapshot}.")
        # The checkpoint we start from is committed: confirm it with the first read, in case the
        # last acknowledgement of the previous run never reached the server (a kill -9).
        self._sent = parse_lsn(slot.confirmed_flush_lsn) if slot.confirmed_flush_lsn else 0
        self._repl = self.source.connect_replication()
        self._cursor = self._repl.cursor()
        self._cursor.start_replication(
            slot_name=self.name, decode=False, start_lsn=self.position["lsn"],
            options={"proto_version": "1", "publication_names": self.name},
            # psycopg2 reports progress this often on its own (keeps wal_sender_timeout away).
            status_interval=max(1.0, min(10.0, self.read_timeout / 2)),
        )
        self._keeper = threading.Thread(target=self._keep_alive, name=f"keepalive-{self.name}", daemon=True)
        self._keeper.start()

    def close(self) -> None:
        self._stopping.set()
        with self._io:
            if self._cursor is not None:
                try:  # the runner acknowledged its last batch after the reader stopped reading
                    self._send_acknowledgement()
                except psycopg2.Error:  # the slot keeps an older position: a little replay, no loss
                    logger.debug("final acknowledgement failed", exc_info=True)
            for conn in (self._repl, self._conn):
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # closing a broken socket may fail; nothing is lost
                        logger.debug("closing a PostgreSQL connection failed", exc_info=True)
            self._repl = self._cursor = self._conn = None
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=5)

    # -- values ------------------------------------------------------------------------------

    def _base_type(self, oid: int) -> int:
        """Built-in types are read as they are; a domain as its base type (what a query returns)."""
        if oid < FIRST_USER_OID:
            return oid
        if oid not in self._base_types:
            base = oid
            with self._conn.cursor() as cur:
                for _ in range(10):  # domains over domains
                    cur.execute("SELECT typtype, typbasetype FROM pg_type WHERE oid = %s", (base,))
                    row = cur.fetchone()
                    if row is None or row[0] != "d":
                        break
                    base = int(row[1])
            self._base_types[oid] = base
        return self._base_types[oid]

    def _value(self, type_oid: int, text: Any) -> Any:
        if text is None or text is UNCHANGED:
            return text
        # psycopg2's own typecasters, as for query results: the same text gives the same value,
        # so a streamed row normalizes exactly like the snapshot's.
        return normalize_value(_python(self._cursor.cast(self._base_type(type_oid), text)))

    def _row(self, relation: Relation, values: list[Any]) -> tuple[dict[str, Any], list[str]]:
        row, unchanged = {}, []
        for (name, type_oid, _), text in zip(relation.columns, values):
            value = self._value(type_oid, text)
            if value is UNCHANGED:
                unchanged.append(name)
            else:
                row[name] = value
        return row, unchanged

    def _key_of(self, row: dict[str, Any]) -> tuple:
        return tuple(row.get(k) for k in self.table.primary_key)

    def _fill_unchanged(self, pending: _Pending) -> None:
        """Give every change its unchanged TOAST values, read from the table by key.

        pgoutput leaves out a large value an update did not touch, and the pipeline needs whole
        rows (a missing column would render another text and re-embed). The old row carries it
        only with REPLICA IDENTITY FULL (used when present); otherwise the current row is read:
        it holds this value or a later one that the stream brings anyway, and a row deleted since
        is skipped, its delete follows. One query per batch of keys, only for such updates.
        """
        if not pending.unchanged:
            return
        columns = sorted({c for _, missing in pending.unchanged for c in missing})
        keys = list(dict.fromkeys(change.key for change, _ in pending.unchanged))
        key_cols = self.table.primary_key
        found: dict[tuple, dict] = {}
        select_cols = ", ".join(quote_ident(c) for c in [*key_cols, *columns])
        key_expr = ", ".join(quote_ident(k) for k in key_cols)
        with self._conn.cursor() as cur:
            for start in range(0, len(keys), FETCH_CHUNK):
                part = keys[start : start + FETCH_CHUNK]
                placeholders = ", ".join("(" + ", ".join(["%s"] * len(key_cols)) + ")" for _ in part)
                cur.execute(
                    f"SELECT {select_cols} FROM {qualified(self.table.name)} WHERE ({key_expr}) IN ({placeholders})",
                    [v for key in part for v in key],
                )
                for record in cur.fetchall():
                    values = [normalize_value(_python(v)) for v in record]
                    found[tuple(values[: len(key_cols)])] = dict(zip(columns, values[len(key_cols) :]))
        gone = set()
        for change, missing in pending.unchanged:
            current = found.get(change.key)
            if current is None:
                gone.add(id(change))
                continue
            for column in missing:
                change.row[column] = current[column]
        if gone:
            pending.batch.changes = [c for c in pending.batch.changes if id(c) not in gone]
        pending.unchanged = []

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ChangeBatch]:
        try:
            self._open()
            yield from self._read()
        except psycopg2.Error as exc:
            raise self._stream_error(exc) from exc
        finally:
            self.close()

    def _stream_error(self, exc: psycopg2.Error) -> ConnectorError:
        text = str(exc).strip()
        where = f"{self.source.host}:{self.source.port}"
        resnapshot = "re-snapshot the task"
        if exc.pgcode == psycopg2.errorcodes.OBJECT_IN_USE:
            # Typically the walsender of a runner that was killed and has not noticed yet.
            return Unavailable(f"Replication slot {self.name} is busy on {where}: {text}")
        if exc.pgcode == psycopg2.errorcodes.UNDEFINED_FILE or "has already been removed" in text:
            return ConnectorError(f"The WAL this task needs is gone from {where} ({text}): {resnapshot}.")
        if exc.pgcode in (psycopg2.errorcodes.UNDEFINED_OBJECT, psycopg2.errorcodes.OBJECT_NOT_IN_PREREQUISITE_STATE):
            return ConnectorError(f"Cannot stream from replication slot {self.name} on {where} ({text}): {resnapshot}.")
        if exc.pgcode is None or isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            # No SQLSTATE: the connection itself broke (or the server dropped it, e.g. past
            # wal_sender_timeout): reconnect and resume from the checkpoint.
            return Unavailable(f"Lost the replication stream from {where}: {text or type(exc).__name__}")
        return ConnectorError(f"The replication stream from {where} failed: {text}")

    def _read(self) -> Iterator[ChangeBatch]:
        pending: _Pending | None = None  # set between Begin and Commit
        commit_time: float | None = None
        # An idle server sends nothing: after `probe_every` of quiet, ask it for an answer, and
        # give up on the connection (a half-open socket) when none comes within `read_timeout`.
        # Time spent suspended (the runner's queue full) is not silence: only unanswered probes count.
        last_io = time.monotonic()
        probe_every = max(self.heartbeat, self.read_timeout / 3)
        probe_sent: float | None = None
        while True:
            message = self._read_message()
            if message is None:
                readable = select.select([self._repl], [], [], self.heartbeat)[0]
                now = time.monotonic()
                if readable:
                    last_io, probe_sent = now, None
                    continue
                if probe_sent is not None and now - probe_sent >= self.read_timeout:
                    raise Unavailable(
                        f"The replication stream from {self.source.host}:{self.source.port} stopped answering "
                        f"(nothing for {self.read_timeout:.0f}s)."
                    )
                if probe_sent is None and now - last_io >= probe_every:
                    self._feedback(reply=True)  # the server answers at once if it is alive
                    probe_sent = now
                yield ChangeBatch()  # heartbeat: lets the runner look at its stop flag
                continue
            last_io, probe_sent = time.monotonic(), None
            data = message.payload
            kind = data[:1]
            reader = _Reader(data)
            reader.byte()
            if kind == b"B":
                reader.int(">q")  # final LSN; the commit's end LSN is what resumes after it
                commit_time = PG_EPOCH + reader.int(">q") / 1_000_000
                pending = _Pending()
            elif kind == b"C":
                reader.byte()  # flags
                reader.int(">q")  # commit LSN
                end = reader.int(">q")
                if pending is None:
                    continue
                self._fill_unchanged(pending)
                batch, pending = pending.batch, None
                batch.position = {"lsn": format_lsn(end), "slot": self.name}
                self.position = batch.position
                self._handed_out = end
                yield batch  # an empty transaction too (servers before 15 send them): a checkpoint
            elif kind == b"R":
                self._on_relation(reader, pending)
                yield from self._hold_until_acknowledged(message.data_start)
            elif kind == b"Y":
                yield from self._hold_until_acknowledged(message.data_start)
            elif kind in (b"I", b"U", b"D", b"T") and pending is not None:
                self._on_change(kind, reader, pending, commit_time)
                if len(pending.batch.changes) >= self.max_rows:
                    # A big transaction is written in slices; it is checkpointed only at its end.
                    self._fill_unchanged(pending)
                    slice_, pending.batch = pending.batch, ChangeBatch()
                    yield slice_
            # 'O' (origin) and 'M' (logical messages) say nothing about the table.

    def _hold_until_acknowledged(self, data_start: int) -> Iterator[ChangeBatch]:
        """Do not read on while transactions handed out are not yet acknowledged, after a message
        the server sent without an LSN (Relation, Type).

        psycopg2 answers a server keepalive that follows such a message by confirming the
        keepalive's LSN on its own (it assumes everything received was processed), which would let
        the slot forget transactions still on their way to the store. Once everything handed out
        is acknowledged, that confirmation is harmless: the transaction being read has not
        committed before it. Schema messages are rare (the first change after a connect or DDL).
        """
        if data_start != 0:
            return
        last_beat = time.monotonic()
        while self._confirmed() < self._handed_out:
            time.sleep(min(0.05, self.heartbeat))
            if time.monotonic() - last_beat >= self.heartbeat:
                # Not reading means not answering the server: report progress, and let the
                # runner see its stop flag.
                self._feedback()
                last_beat = time.monotonic()
                yield ChangeBatch()
        self._feedback()

    def _on_relation(self, reader: _Reader, pending: _Pending | None) -> None:
        oid = reader.int(">I")
        schema, name = reader.string(), reader.string()
        identity = chr(reader.byte()[0])
        columns = []
        for _ in range(reader.int(">h")):
            flags = reader.byte()[0]
            column = reader.string()
            type_oid = reader.int(">I")
            reader.int(">i")  # type modifier
            columns.append((column, type_oid, bool(flags & 1)))
        relation = Relation(oid, schema or "pg_catalog", name, identity, columns)
        previous = self._relations.get(oid)
        self._relations[oid] = relation
        if (schema, name) != self._ours or pending is None:
            return
        before = [c[0] for c in previous.columns] if previous else [c.name for c in self.table.columns]
        after = [c[0] for c in columns]
        if before != after:
            # pgoutput carries no DDL; a changed column list is how a schema change shows.
            pending.batch.notices.append(
                f"DDL on {self.table.name}: its columns are now {', '.join(after)} (were {', '.join(before)})."
            )

    def _on_change(self, kind: bytes, reader: _Reader, pending: _Pending, stamp: float | None) -> None:
        batch = pending.batch
        if kind == b"T":
            count = reader.int(">i")
            reader.byte()  # options: CASCADE, RESTART IDENTITY
            relids = [reader.int(">I") for _ in range(count)]
            if any(self._is_ours(r) for r in relids):
                batch.changes.append(Change("truncate", (), {}, timestamp=stamp))
                batch.notices.append(f"TRUNCATE of {self.table.name}: every vector was deleted.")
            return
        relation = self._relations.get(reader.int(">I"))
        if relation is None or not self._is_ours(relation.oid):
            return  # the publication holds only our table; this is belt and braces
        if kind == b"I":
            reader.byte()  # 'N'
            row, unchanged = self._row(relation, reader.tuple())
            self._append(pending, Change("upsert", self._key_of(row), row, timestamp=stamp), unchanged)
            return
        marker = reader.byte()
        old = None
        if marker in (b"K", b"O"):
            old, _ = self._row(relation, reader.tuple())
            if marker == b"K":  # only the replica identity columns are set in a key tuple
                old = {k: v for k, v in old.items() if k in relation.identity_columns}
            if kind == b"U":
                reader.byte()  # 'N'
        if kind == b"D":
            if old is not None:
                batch.changes.append(Change("delete", self._key_of(old), old, timestamp=stamp))
            return
        row, unchanged = self._row(relation, reader.tuple())
        new_key = self._key_of(row)
        if marker == b"O":
            # REPLICA IDENTITY FULL: the old row holds the untouched TOAST values.
            for column in [c for c in unchanged if c in old]:
                row[column] = old[column]
                unchanged.remove(column)
        old_key = self._key_of(old) if old is not None else new_key
        if old_key != new_key:  # a primary-key change: delete old, insert new
            batch.changes.append(Change("delete", old_key, old, timestamp=stamp))
            self._append(pending, Change("upsert", new_key, row, timestamp=stamp), unchanged)
        else:
            before = old if marker == b"O" else None
            self._append(pending, Change("upsert", new_key, row, before=before, timestamp=stamp), unchanged)

    @staticmethod
    def _append(pending: _Pending, change: Change, unchanged: list[str]) -> None:
        pending.batch.changes.append(change)
        if unchanged:
            pending.unchanged.append((change, unchanged))

    def _is_ours(self, oid: int) -> bool:
        relation = self._relations.get(oid)
        return relation is not None and (relation.schema, relation.name) == self._ours
