"""Checks before start: each thing that can be wrong with a source, a table or a task is named by
its own check with its own message, against real MariaDB servers (no mocks)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from datasources.connectors.base import CheckResult
from datasources.models import DataSource
from datasources.services import check_source, save_source, save_store
from rsync_admin import devservers
from rsync_admin.corpus import create_docs_table
from tasks.models import SyncRun, SyncTask
from tasks.services import TaskNotReady, required_columns, save_task, start_task

from .conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)

ALL_CHECKS = {
    "connect", "privileges", "select", "log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata",
    "table", "primary_key",
}
DOCS_COLUMNS = "body, id, kind, module, name, stars, title, updated_at"


def make_source(server, database: str, *, user: str = "root", password: str = "",
                host: str = "127.0.0.1", port: int | None = None) -> DataSource:
    return save_source(
        name=unique("source").replace("_", "-"), host=host, port=port or server.port,
        database=database, user=user, password=password,
    )


def make_task(source: DataSource, *, table: str = "docs", template: str = "{title}\n\n{body}",
              payload: list[str] | None = None) -> SyncTask:
    # The store is never contacted: checks are about the source.
    store = save_store(name=unique("store").replace("_", "-"), uri="http://127.0.0.1:19530")
    return save_task(
        name=unique("task").replace("_", "-"), source=source, store=store, table=table, text_template=template,
        payload_columns=payload if payload is not None else ["name", "module"], collection=unique("col"),
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    names = [r.name for r in results]
    assert len(names) == len(set(names)), f"a check is reported twice: {names}"
    return {r.name: r for r in results}


def failures(results: list[CheckResult]) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.ok}


@pytest.fixture
def docs_db(source_db):
    """A fresh database on the good MariaDB holding an empty docs table (primary key `id`)."""
    database, conn = source_db
    create_docs_table(conn, "docs", 0)
    return database, conn


@pytest.fixture
def make_user(mariadb):
    """Create users on the good MariaDB (`'name'@'%'`, password "pw"), each with the given grants."""
    admin = devservers.mariadb_root(mariadb)
    created: list[str] = []

    def create(*grants: str) -> str:
        name = unique("u")
        with admin.cursor() as cur:
            cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'")
            created.append(name)
            for grant in grants:
                cur.execute(f"GRANT {grant} TO '{name}'@'%'")
        return name

    yield create
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
    admin.close()


def run_as_root(server, sql: str) -> None:
    admin = devservers.mariadb_root(server)
    try:
        with admin.cursor() as cur:
            cur.execute(sql)
    finally:
        admin.close()


# -- a good source ---------------------------------------------------------------------------


def test_good_source_passes_every_check(mariadb, docs_db):
    database, _ = docs_db
    source = make_source(mariadb, database)

    results = check_source(source, table="docs", required_columns={"text template": ["title", "body"],
                                                                     "payload": ["name", "stars"]})

    assert failures(results) == {}
    checks = by_name(results)
    assert set(checks) == ALL_CHECKS
    assert checks["connect"].message.startswith("Connected to MariaDB 10.")
    assert checks["primary_key"].message == "Primary key: id."
    source.refresh_from_db()
    assert source.last_check_ok is True
    assert source.last_check_at is not None
    assert {r["name"] for r in source.last_check_report} == ALL_CHECKS


def test_good_task_starts(mariadb, docs_db):
    database, _ = docs_db
    task = make_task(make_source(mariadb, database))

    run = start_task(task, enqueue=False)

    assert run.status == SyncRun.Status.QUEUED
    task.refresh_from_db()
    assert task.desired_state == SyncTask.DesiredState.RUNNING


# -- connecting ------------------------------------------------------------------------------


def test_unreachable_host_is_named(mariadb):
    port = devservers.free_port()  # nothing listens there
    source = make_source(mariadb, "anything", port=port)

    results = check_source(source, table="docs")

    assert [(r.name, r.ok) for r in results] == [("connect", False)]
    assert results[0].message == (
        f"Cannot reach the database server at 127.0.0.1:{port} (connection refused: nothing listens on that port)."
    )
    source.refresh_from_db()
    assert source.last_check_ok is False
    assert source.last_check_report == [results[0].as_dict()]


def test_unknown_host_name_is_named(mariadb):
    source = make_source(mariadb, "anything", host="no-such-host.invalid", port=3306)

    results = check_source(source)

    assert [(r.name, r.ok) for r in results] == [("connect", False)]
    assert results[0].message == (
        "Cannot reach the database server at no-such-host.invalid:3306 (host name 'no-such-host.invalid' not found)."
    )


def test_wrong_password(mariadb, docs_db):
    database, _ = docs_db
    source = make_source(mariadb, database, password="not-the-password")

    results = check_source(source, table="docs")

    assert failures(results) == {
        "connect": f"Access denied for user 'root' at 127.0.0.1:{mariadb.port}: wrong user name or password."
    }
    assert len(results) == 1


def test_unknown_user_reads_as_bad_credentials(mariadb, docs_db):
    database, _ = docs_db
    source = make_source(mariadb, database, user="nobody_here", password="pw")

    (result,) = check_source(source, table="docs")

    assert not result.ok
    assert "wrong user name or password" in result.message
    assert "'nobody_here'" in result.message


def test_missing_database(mariadb):
    database = unique("nodb")
    source = make_source(mariadb, database)

    (result,) = check_source(source)

    assert (result.name, result.ok) == ("connect", False)
    assert result.message == f"Database '{database}' does not exist on 127.0.0.1:{mariadb.port}."


# -- privileges ------------------------------------------------------------------------------


def test_user_with_select_only_lacks_replication_privileges(mariadb, docs_db, make_user):
    database, _ = docs_db
    user = make_user(f"SELECT ON `{database}`.*")
    source = make_source(mariadb, database, user=user, password="pw")

    results = check_source(source, table="docs")

    grant = f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'"
    assert failures(results) == {
        "privileges": f"User '{user}'@'%' lacks REPLICATION SLAVE, BINLOG MONITOR (needed to read the binary "
                      f"log and its position): run {grant}.",
    }
    assert by_name(results)["select"].ok

    # The advice is a statement that works as written, and fixes it.
    run_as_root(mariadb, grant)
    assert failures(check_source(source, table="docs")) == {}


def test_super_does_not_stand_in_for_replication_slave(mariadb, docs_db, make_user):
    # SUPER lets a user see the binlog position, but the server refuses it the binlog dump.
    database, _ = docs_db
    user = make_user("SUPER ON *.*", f"SELECT ON `{database}`.*")
    source = make_source(mariadb, database, user=user, password="pw")

    message = failures(check_source(source, table="docs"))["privileges"]

    assert message.startswith(f"User '{user}'@'%' lacks REPLICATION SLAVE (")
    assert "BINLOG MONITOR" not in message


def test_replication_client_is_accepted_for_binlog_monitor(mariadb, docs_db, make_user):
    # On MariaDB 10.5+ REPLICATION CLIENT is an alias that grants BINLOG MONITOR.
    database, _ = docs_db
    user = make_user("REPLICATION SLAVE, REPLICATION CLIENT ON *.*", f"SELECT ON `{database}`.*")
    source = make_source(mariadb, database, user=user, password="pw")

    results = check_source(source, table="docs")

    assert failures(results) == {}
    assert by_name(results)["privileges"].message == "Replication privileges granted."


def test_user_without_select_on_the_table(mariadb, docs_db, make_user):
    database, conn = docs_db
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE other (id INT PRIMARY KEY)")
    # Access to the database (so the connection is allowed), but not to the docs table.
    user = make_user("REPLICATION SLAVE, BINLOG MONITOR ON *.*", f"SELECT ON `{database}`.`other`")
    source = make_source(mariadb, database, user=user, password="pw")

    results = check_source(source, table="docs")

    grant = f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'"
    assert failures(results) == {
        "select": f"User '{user}'@'%' lacks SELECT on {database}.docs: run {grant}.",
        # information_schema hides the table from this user: it must not be called missing.
        "table": f"Cannot see table 'docs' in database '{database}': without SELECT on it, whether it exists "
                 f"and which columns it has cannot be checked.",
    }

    run_as_root(mariadb, grant)
    assert failures(check_source(source, table="docs")) == {}


def test_user_without_access_to_the_database(mariadb, docs_db, make_user):
    database, _ = docs_db
    user = make_user("REPLICATION SLAVE, BINLOG MONITOR ON *.*")
    source = make_source(mariadb, database, user=user, password="pw")

    (result,) = check_source(source, table="docs")

    assert (result.name, result.ok) == ("connect", False)
    assert result.message == (
        f"User '{user}' has no access to database '{database}' on 127.0.0.1:{mariadb.port}: "
        f"grant it SELECT ON `{database}`.*."
    )


# -- binary log settings ---------------------------------------------------------------------


@pytest.fixture
def misconfigured_source(misconfigured_mariadb):
    database = unique("src")
    admin = devservers.mariadb_root(misconfigured_mariadb)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    admin.close()
    conn = devservers.mariadb_root(misconfigured_mariadb, database)
    create_docs_table(conn, "docs", 0)
    conn.close()
    return make_source(misconfigured_mariadb, database)


@pytest.mark.parametrize(("name", "message"), [
    ("log_bin", "log_bin is OFF, must be ON: start the server with --log-bin (changes are read from the binary log)."),
    ("binlog_format", "binlog_format is STATEMENT, must be ROW: set binlog_format=ROW "
                      "(row events carry the changed rows)."),
    ("binlog_row_image", "binlog_row_image is MINIMAL, must be FULL: set binlog_row_image=FULL "
                         "(updates must carry every column)."),
    ("binlog_row_metadata", "binlog_row_metadata is NO_LOG, must be FULL: set binlog_row_metadata=FULL "
                            "(without it column names are unknown in the log)."),
])
def test_each_binlog_setting_has_its_own_message(misconfigured_source, name, message):
    checks = by_name(check_source(misconfigured_source, table="docs"))

    assert not checks[name].ok
    assert checks[name].message == message


def test_misconfigured_server_fails_only_the_binlog_checks(misconfigured_source):
    results = check_source(misconfigured_source, table="docs")

    assert set(by_name(results)) == ALL_CHECKS
    assert set(failures(results)) == {"log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata"}


def test_good_server_reports_its_settings(mariadb, docs_db):
    database, _ = docs_db
    checks = by_name(check_source(make_source(mariadb, database)))

    assert checks["log_bin"].message == "log_bin = ON."
    assert checks["binlog_format"].message == "binlog_format = ROW."
    assert checks["binlog_row_image"].message == "binlog_row_image = FULL."
    assert checks["binlog_row_metadata"].message == "binlog_row_metadata = FULL."


# -- the table and the task's columns --------------------------------------------------------


def test_missing_table(mariadb, docs_db):
    database, _ = docs_db
    source = make_source(mariadb, database)

    results = check_source(source, table="nosuch_table", required_columns={"text template": ["title"]})

    assert failures(results) == {"table": f"Table 'nosuch_table' does not exist in database '{database}'."}
    # Nothing else is said about a table that is not there.
    assert not {"select", "primary_key", "text_template"} & set(by_name(results))


def test_table_without_primary_key(mariadb, docs_db):
    database, conn = docs_db
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (id INT NOT NULL, body TEXT)")
    source = make_source(mariadb, database)

    results = check_source(source, table="notes", required_columns={"text template": ["body"]})

    assert failures(results) == {
        "primary_key": "Table 'notes' has no primary key: rows could not be matched to vectors; add one.",
    }


def drop_columns(conn, *names: str) -> None:
    """The table changed after the task was saved (saving checks the columns: see test_api)."""
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"ALTER TABLE docs DROP COLUMN {name}")


def test_template_naming_a_missing_column(mariadb, docs_db):
    database, conn = docs_db
    task = make_task(make_source(mariadb, database), template="{title}: {kind}")
    drop_columns(conn, "kind")

    results = check_source(task.source, table=task.table, required_columns=required_columns(task))

    assert failures(results) == {
        "text_template": "The text template names column 'kind' that 'docs' does not have (it has: body, id, "
                         "module, name, stars, title, updated_at).",
    }


def test_payload_naming_missing_columns(mariadb, docs_db):
    database, conn = docs_db
    task = make_task(make_source(mariadb, database), payload=["name", "stars", "module"])
    drop_columns(conn, "stars", "module")

    results = check_source(task.source, table=task.table, required_columns=required_columns(task))

    assert failures(results) == {
        "payload": "The payload names columns 'stars', 'module' that 'docs' does not have (it has: body, id, kind, "
                   "name, title, updated_at).",
    }


# -- a task whose check fails cannot start ---------------------------------------------------


def test_start_task_refuses_a_table_without_primary_key(mariadb, docs_db):
    database, conn = docs_db
    task = make_task(make_source(mariadb, database))
    with conn.cursor() as cur:  # the schema changed after the task was saved
        cur.execute("ALTER TABLE docs DROP PRIMARY KEY")

    with pytest.raises(TaskNotReady) as caught:
        start_task(task, enqueue=False)

    assert str(caught.value) == "Table 'docs' has no primary key: rows could not be matched to vectors; add one."
    assert not SyncRun.objects.filter(task=task).exists()
    task.refresh_from_db()
    assert task.desired_state == SyncTask.DesiredState.STOPPED


def test_start_task_says_every_reason(mariadb, docs_db):
    database, conn = docs_db
    source = make_source(mariadb, database)
    task = make_task(source, template="{title} {kind}")
    drop_columns(conn, "kind")
    save_source(name=source.name, password="wrong")

    with pytest.raises(TaskNotReady, match="wrong user name or password"):
        start_task(SyncTask.objects.get(pk=task.pk), enqueue=False)

    save_source(name=source.name, password="")
    with pytest.raises(TaskNotReady, match="names column 'kind'"):
        start_task(SyncTask.objects.get(pk=task.pk), enqueue=False)
    assert not SyncRun.objects.filter(task=task).exists()


# -- the management command ------------------------------------------------------------------


def test_command_prints_fail_lines_and_exits_with_error(misconfigured_source):
    out = StringIO()

    with pytest.raises(CommandError, match=r"^4 check\(s\) failed\.$"):
        call_command("check_source", misconfigured_source.name, "--table", "docs", stdout=out)

    lines = out.getvalue().splitlines()
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert [line.split()[1] for line in failed] == ["log_bin", "binlog_format", "binlog_row_image",
                                                    "binlog_row_metadata"]
    assert any(line.startswith("FAIL") and line.endswith("binlog_format=ROW (row events carry the changed rows).")
               for line in lines)
    assert any(line.startswith("ok   connect") for line in lines)


def test_command_checks_a_tasks_columns(mariadb, docs_db):
    database, conn = docs_db
    task = make_task(make_source(mariadb, database), template="{title} {kind}")
    drop_columns(conn, "kind")
    out = StringIO()

    with pytest.raises(CommandError, match=r"^1 check\(s\) failed\.$"):
        call_command("check_source", "--task", task.name, stdout=out)

    (failed,) = [line for line in out.getvalue().splitlines() if line.startswith("FAIL")]
    assert failed.split()[1] == "text_template"
    assert "'kind'" in failed


def test_command_passes_a_good_source(mariadb, docs_db):
    database, _ = docs_db
    source = make_source(mariadb, database)
    out = StringIO()

    call_command("check_source", source.name, "--table", "docs", stdout=out)

    lines = out.getvalue().splitlines()
    assert len(lines) == len(ALL_CHECKS)
    assert all(line.startswith("ok   ") for line in lines), lines
