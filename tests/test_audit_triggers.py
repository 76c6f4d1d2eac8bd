"""The audit log's append-only guards as `manage.py migrate` really installs them, on each metadata
database the product supports: a fresh SQLite file, a fresh database on the private PostgreSQL and
one on the private MariaDB (binary logging on, as in production replication setups).

Each test migrates in a subprocess with DATABASE_URL pointing at the fresh database, writes events
through the application, then tries to change them with plain SQL, as someone with database access
would.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rsync_admin import devservers

from .conftest import unique

ROOT = Path(__file__).resolve().parent.parent
VENDORS = ["sqlite", "postgresql", "mysql"]

# Two events through the service the application uses (chain head row lock, JSON diff and all).
RECORD_TWO = (
    "from audit.services import record; "
    "record(action='probe', object_type='test', object_label='first', diff={'n': 1}); "
    "record(action='probe', object_type='test', object_label='second', diff={'n': 2})"
)


@dataclass
class MetaDatabase:
    vendor: str
    url: str
    connect: Callable[[], Any]  # a DB-API connection in autocommit mode
    error: type[Exception]  # the driver's base error class


def manage(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=url, PYTHONUNBUFFERED="1")
    env.pop("RSYNC_TEST_DATABASE", None)
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def mariadb_connect(server, database: str, user: str = "root", password: str = ""):
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=server.port, user=user, password=password, database=database,
                           autocommit=True)


def mysql_url(server, database: str, user: str = "root", password: str = "") -> str:
    auth = f"{user}:{password}" if password else user
    return f"mysql://{auth}@127.0.0.1:{server.port}/{database}"


def fresh_database(request, tmp_path: Path, vendor: str) -> MetaDatabase:
    """An empty database of `vendor`, dropped at the end of the test."""
    if vendor == "sqlite":
        path = tmp_path / "meta.sqlite3"
        return MetaDatabase(vendor, f"sqlite:///{path}", lambda: sqlite3.connect(path, isolation_level=None),
                            sqlite3.Error)
    name = unique("meta")
    if vendor == "postgresql":
        import psycopg2

        server = request.getfixturevalue("postgres")
        admin = devservers.postgres_admin(server)
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()

        def drop_pg() -> None:
            admin = devservers.postgres_admin(server)
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()

        request.addfinalizer(drop_pg)
        return MetaDatabase(
            vendor, f"postgres://{server.extra['user']}:{server.extra['password']}@127.0.0.1:{server.port}/{name}",
            lambda: devservers.postgres_admin(server, name), psycopg2.Error,
        )
    import pymysql

    server = request.getfixturevalue("mariadb")
    admin = devservers.mariadb_root(server)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.close()

    def drop_mysql() -> None:
        admin = devservers.mariadb_root(server)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()

    request.addfinalizer(drop_mysql)
    return MetaDatabase(vendor, mysql_url(server, name), lambda: mariadb_connect(server, name), pymysql.Error)


def mariadb_user(request, server, database: str, privileges: str) -> tuple[str, str]:
    """A MariaDB account with `privileges` on `database` only (no SUPER), dropped afterwards."""
    user, password = unique("app"), "app-password-1"
    admin = devservers.mariadb_root(server)
    with admin.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT {privileges} ON `{database}`.* TO '{user}'@'%'")
    admin.close()

    def drop_user() -> None:
        admin = devservers.mariadb_root(server)
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()

    request.addfinalizer(drop_user)
    return user, password


def execute(conn, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def events(conn) -> list[tuple]:
    cur = conn.cursor()
    cur.execute("SELECT id, action, object_label FROM audit_auditevent ORDER BY id")
    rows = [tuple(row) for row in cur.fetchall()]
    cur.close()
    return rows


@pytest.mark.parametrize("vendor", VENDORS)
def test_migrate_installs_guards_that_refuse_changes_in_sql(request, tmp_path, vendor):
    db = fresh_database(request, tmp_path, vendor)
    manage(db.url, "migrate", "--no-input")
    manage(db.url, "shell", "-c", RECORD_TWO)
    conn = db.connect()
    written = events(conn)
    assert [row[2] for row in written] == ["first", "second"]
    first = written[0][0]

    if vendor == "sqlite":  # the migration itself made them (the test suite's own database drops them)
        cur = conn.cursor()
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'")
        assert sorted(r[0] for r in cur.fetchall()) == ["audit_no_delete", "audit_no_update"]
    for sql in (f"UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = {first}",
                f"DELETE FROM audit_auditevent WHERE id = {first}",
                "DELETE FROM audit_auditevent"):
        with pytest.raises(db.error, match="append-only"):
            execute(conn, sql)
    if vendor == "postgresql":
        with pytest.raises(db.error, match="append-only"):
            execute(conn, "TRUNCATE audit_auditevent")
    if vendor == "mysql":  # no trigger fires on TRUNCATE: the guard table's foreign key refuses it
        with pytest.raises(db.error, match="Cannot truncate a table referenced in a foreign key"):
            execute(conn, "TRUNCATE TABLE audit_auditevent")
    assert events(conn) == written
    conn.close()
    assert "The audit chain of 2 events is intact" in manage(db.url, "verify_audit").stdout


def test_a_mysql_app_user_without_drop_cannot_truncate_or_drop_the_triggers(request, tmp_path, mariadb):
    """The setup README recommends: migrate as the database owner, run the application as a user
    with data rights only. That user works, and cannot get around the guards: TRUNCATE needs DROP
    (even with foreign key checks off) and dropping a trigger needs TRIGGER."""
    db = fresh_database(request, tmp_path, "mysql")
    manage(db.url, "migrate", "--no-input")
    database = db.url.rsplit("/", 1)[1]
    user, password = mariadb_user(request, mariadb, database, "SELECT, INSERT, UPDATE, DELETE")
    app_url = mysql_url(mariadb, database, user, password)
    manage(app_url, "shell", "-c", RECORD_TWO)
    conn = mariadb_connect(mariadb, database, user, password)
    written = events(conn)
    assert len(written) == 2
    execute(conn, "SET FOREIGN_KEY_CHECKS = 0")
    with pytest.raises(db.error, match="DROP command denied"):
        execute(conn, "TRUNCATE TABLE audit_auditevent")
    # Refused for want of the TRIGGER privilege (and, with the binary log on, of SUPER as well).
    with pytest.raises(db.error, match="TRIGGER command denied|SUPER privilege"):
        execute(conn, "DROP TRIGGER audit_no_delete")
    with pytest.raises(db.error, match="append-only"):
        execute(conn, f"DELETE FROM audit_auditevent WHERE id = {written[0][0]}")
    assert events(conn) == written
    conn.close()


def test_mariadb_with_binary_logging_says_how_to_allow_the_triggers(request, tmp_path, mariadb):
    """With the binary log on, a user without SUPER may not create triggers: migrate stops with a
    message that says what to do, and carries on once the server trusts trigger creators."""
    db = fresh_database(request, tmp_path, "mysql")
    database = db.url.rsplit("/", 1)[1]
    user, password = mariadb_user(request, mariadb, database, "ALL PRIVILEGES")
    owner_url = mysql_url(mariadb, database, user, password)
    admin = devservers.mariadb_root(mariadb)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT @@log_bin, @@log_bin_trust_function_creators")
            assert cur.fetchone() == (1, 0), "the private MariaDB runs with the binary log, as in production"

        refused = manage(owner_url, "migrate", "--no-input", check=False)
        assert refused.returncode != 0
        assert "TriggerInstallError: Cannot create the audit log's append-only triggers" in refused.stderr
        assert "log_bin_trust_function_creators = 1" in refused.stderr and "SUPER" in refused.stderr
        assert "Traceback" not in refused.stderr

        with admin.cursor() as cur:
            cur.execute("SET GLOBAL log_bin_trust_function_creators = 1")
        manage(owner_url, "migrate", "--no-input")
        manage(owner_url, "shell", "-c", RECORD_TWO)
        conn = mariadb_connect(mariadb, database, user, password)
        with pytest.raises(db.error, match="append-only"):
            execute(conn, "UPDATE audit_auditevent SET action = 'x'")
        conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute("SET GLOBAL log_bin_trust_function_creators = 0")
        admin.close()
