"""PostgreSQL sources: checks, values, TOAST, acknowledgements and slots, against a private
cluster (no mocks). The convergence and crash tests run for PostgreSQL too (test_stream,
test_crash: `source_kind`)."""

from __future__ import annotations

import itertools
import random
import string
import time

import pytest

from datasources.connectors.base import ConnectorError, Unavailable
from datasources.connectors.postgres import PostgresSource, parse_lsn, replication_name
from datasources.embedders import get_embedder
from datasources.services import check_source, save_source, save_store
from rsync_admin import devservers
from tasks.models import Checkpoint, SyncRun, SyncTask
from tasks.runner import TaskRunner
from tasks.selectors import replication_slot_status
from tasks.services import delete_task, mark_running, save_task, stop_task

from .conftest import unique
from .helpers import expected_text, source_rows, target_rows, wait_converged, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

_stream_ids = itertools.count(900_001)  # task ids for streams opened without a task


@pytest.fixture
def source_kind() -> str:
    return "postgresql"


@pytest.fixture(scope="module")
def misconfigured_postgres():
    """A cluster set up wrong for logical replication: wal_level replica, and its only slot taken."""
    import shutil
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="rsync-test-pg-bad-"))
    server = devservers.start_postgres(directory, cdc=False, args=("max_replication_slots=1",))
    admin = devservers.postgres_admin(server)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_create_physical_replication_slot('someone_elses')")
    admin.close()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def connector(server, database: str, **overrides) -> PostgresSource:
    settings = {"host": "127.0.0.1", "port": server.port, "user": server.extra["user"],
                "password": server.extra["password"], "database": database, **overrides}
    return PostgresSource(**settings)


def execute(conn, *statements, params=None):
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement, params)


def failures(results) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.ok}


def slot(conn, name: str) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (name,)
        )
        row = cur.fetchone()
    return {"active": row[0], "confirmed_flush_lsn": row[1]} if row else None


def publication_exists(conn, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        return cur.fetchone() is not None


def random_text(size: int) -> str:
    """Text that does not compress, so PostgreSQL stores it out of line (TOAST)."""
    rng = random.Random(size)
    return "".join(rng.choice(string.ascii_letters + " ") for _ in range(size))


def open_stream(source: PostgresSource, table: str, task_id: int | None = None):
    """A slot and publication for `table` (as a snapshot would create them), their start position,
    the rows the snapshot sees, and the table's description."""
    task_id = task_id or next(_stream_ids)
    info = source.describe_table(table)
    conn = source.connect()
    try:
        position = source.begin_snapshot(conn, table=info, task_id=task_id)
        rows = source.read_chunk(conn, info, after_key=None, limit=1000)
    finally:
        conn.close()
    return task_id, info, position, rows


def next_changes(batches, timeout: float = 20.0, *, acknowledge=None):
    """The next batch that ends a transaction with changes (heartbeats skipped); with
    `acknowledge`, every transaction read is acknowledged, as the runner does once it is stored."""
    deadline = time.monotonic() + timeout
    for batch in batches:
        if acknowledge is not None and batch.position is not None:
            acknowledge(batch.position)
        if batch.changes and batch.position is not None:
            return batch
        assert time.monotonic() < deadline, "no change arrived"
    raise AssertionError("the stream ended")


def stream(source, info, position, task_id):
    return source.change_stream(info, position, task_id=task_id, heartbeat=0.2, read_timeout=10, max_rows=1000)


# -- checks ----------------------------------------------------------------------------------


def test_good_source_passes_every_check(postgres, source_db):
    database, conn = source_db
    execute(conn, "CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text, stars int)")
    source = save_source(name=unique("source").replace("_", "-"), kind="postgresql", host="127.0.0.1",
                         port=postgres.port, database=database, user="postgres", password=postgres.extra["password"])

    results = check_source(source, table="docs", required_columns={"text template": ["title", "body"],
                                                                     "payload": ["stars"]})

    assert failures(results) == {}
    checks = {r.name: r.message for r in results}
    assert set(checks) == {"connect", "wal_level", "replication", "replication_slots", "table", "select",
                           "primary_key", "replica_identity", "publication"}
    assert checks["connect"].startswith("Connected to PostgreSQL 1")
    assert checks["replica_identity"] == (
        "REPLICA IDENTITY DEFAULT: updates and deletes are keyed by the primary key."
    )
    source.refresh_from_db()
    assert source.last_check_ok is True


def test_connect_errors_are_named(postgres, source_db):
    database, _ = source_db
    where = f"127.0.0.1:{postgres.port}"

    (result,) = connector(postgres, database, password="not-the-password").check()
    assert (result.name, result.ok) == ("connect", False)
    assert result.message == f"Access denied for user 'postgres' at {where}: wrong user name or password."

    (result,) = connector(postgres, "no_such_db").check()
    assert result.message == f"Database 'no_such_db' does not exist on {where}."

    port = devservers.free_port()  # nothing listens there
    unreachable = connector(postgres, database, port=port)
    (result,) = unreachable.check()
    assert result.message == (
        f"Cannot reach the database server at 127.0.0.1:{port} (connection refused: nothing listens on that port)."
    )
    with pytest.raises(Unavailable):  # the runner retries these, it does not fail the run
        unreachable.connect()
    with pytest.raises(ConnectorError) as wrong:
        connector(postgres, database, password="x").connect()
    assert not isinstance(wrong.value, Unavailable)

    (result,) = connector(postgres, database, host="no-such-host.invalid").check()
    assert result.message == (
        "Cannot reach the database server at no-such-host.invalid:"
        f"{postgres.port} (host name 'no-such-host.invalid' not found)."
    )


def test_wal_level_and_full_slots_have_their_own_messages(misconfigured_postgres):
    results = connector(misconfigured_postgres, "postgres").check()

    assert failures(results) == {
        "wal_level": "wal_level is replica, must be logical: ALTER SYSTEM SET wal_level = logical, then restart "
                     "the server.",
        "replication_slots": "All 1 replication slots are in use (max_replication_slots = 1): drop unused slots "
                             "(see pg_replication_slots) or raise max_replication_slots and restart the server.",
    }


def test_the_tasks_own_slot_does_not_need_a_free_one(postgres, source_db):
    database, conn = source_db
    execute(conn, "CREATE TABLE docs (id bigint PRIMARY KEY, title text)")
    source = connector(postgres, database)
    task_id, *_ = open_stream(source, "docs")

    checks = {r.name: r for r in source.check(table="docs", task_id=task_id)}

    assert checks["replication_slots"].ok
    assert checks["replication_slots"].message.startswith(f"Replication slot {replication_name(task_id)} exists")
    assert checks["publication"].message == f"Publication {replication_name(task_id)} publishes docs."


@pytest.fixture
def make_role(postgres):
    admin = devservers.postgres_admin(postgres)

    def create(*attributes: str) -> str:
        name = unique("u")
        execute(admin, f"CREATE ROLE {name} LOGIN PASSWORD 'pw' {' '.join(attributes)}")
        return name

    yield create
    admin.close()  # roles outlive the test (they own objects in its database); the cluster is throwaway


def test_privileges_each_have_their_own_message(postgres, source_db, make_role):
    database, conn = source_db
    execute(conn, "CREATE TABLE docs (id bigint PRIMARY KEY, title text)")
    plain = make_role()

    results = connector(postgres, database, user=plain, password="pw").check(table="docs", task_id=1)

    assert failures(results) == {
        "replication": f"User '{plain}' may not read the change stream: it needs the REPLICATION attribute "
                       f'(ALTER ROLE "{plain}" REPLICATION) or superuser.',
        "select": f"User '{plain}' cannot read table 'docs': GRANT SELECT ON \"docs\" TO \"{plain}\".",
        "publication": f"User '{plain}' cannot create publications in database '{database}' (GRANT CREATE ON "
                       f'DATABASE "{database}" TO "{plain}") and does not own table \'docs\', and only its owner '
                       f'may publish it (ALTER TABLE "docs" OWNER TO "{plain}"); or have an administrator run '
                       f'CREATE PUBLICATION {replication_name(1)} FOR TABLE "docs".',
    }

    replicator = make_role("REPLICATION")
    execute(conn, f"GRANT SELECT ON docs TO {replicator}", f'GRANT CREATE ON DATABASE "{database}" TO {replicator}')
    results = connector(postgres, database, user=replicator, password="pw").check(table="docs", task_id=1)
    assert failures(results) == {
        "publication": f"User '{replicator}' does not own table 'docs', and only its owner may publish it "
                       f'(ALTER TABLE "docs" OWNER TO "{replicator}"); or have an administrator run '
                       f'CREATE PUBLICATION {replication_name(1)} FOR TABLE "docs".',
    }

    execute(conn, f"ALTER TABLE docs OWNER TO {replicator}")
    results = connector(postgres, database, user=replicator, password="pw").check(table="docs", task_id=1)
    assert failures(results) == {}


def test_table_checks(postgres, source_db):
    database, conn = source_db
    execute(conn, "CREATE TABLE nopk (id int, title text)", "CREATE TABLE docs (id int PRIMARY KEY, title text)")
    source = connector(postgres, database)

    assert failures(source.check(table="missing")) == {
        "table": f"Table 'missing' does not exist in database '{database}'."
    }
    assert failures(source.check(table="nopk")) == {
        "primary_key": "Table 'nopk' has no primary key: rows could not be matched to vectors; add one.",
        "replica_identity": "Table 'nopk' has no primary key, so with REPLICA IDENTITY DEFAULT PostgreSQL cannot "
                            "publish its updates and deletes (and refuses them once the table is published). Add a "
                            'primary key, or run ALTER TABLE "nopk" REPLICA IDENTITY FULL.',
    }
    assert failures(source.check(table="docs", required_columns={"text template": ["title", "body"],
                                                                  "payload": ["stars", "lang"]})) == {
        "text_template": "The text template names column 'body' that 'docs' does not have (it has: id, title).",
        "payload": "The payload names columns 'stars', 'lang' that 'docs' does not have (it has: id, title).",
    }


def test_replica_identity_messages(postgres, source_db):
    database, conn = source_db
    execute(
        conn,
        "CREATE TABLE nothing (id int PRIMARY KEY, title text)",
        "ALTER TABLE nothing REPLICA IDENTITY NOTHING",
        "CREATE TABLE byindex (id int PRIMARY KEY, code text NOT NULL UNIQUE)",
        "ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_code_key",
        "CREATE TABLE whole (id int PRIMARY KEY, title text)",
        "ALTER TABLE whole REPLICA IDENTITY FULL",
    )
    source = connector(postgres, database)

    def identity(table: str):
        return next(r for r in source.check(table=table) if r.name == "replica_identity")

    result = identity("nothing")
    assert not result.ok
    assert result.message == (
        "Table 'nothing' has REPLICA IDENTITY NOTHING: deleted rows and key changes would reach the stream without "
        'their key. Run ALTER TABLE "nothing" REPLICA IDENTITY DEFAULT (it has a primary key) or '
        'ALTER TABLE "nothing" REPLICA IDENTITY FULL.'
    )
    result = identity("byindex")
    assert not result.ok
    assert result.message == (
        "Table 'byindex' uses REPLICA IDENTITY USING INDEX byindex_code_key, which lacks the primary key column(s) "
        'id: deleted rows could not be matched to vectors. Run ALTER TABLE "byindex" REPLICA IDENTITY DEFAULT.'
    )
    result = identity("whole")
    assert result.ok and result.message.startswith("REPLICA IDENTITY FULL")


# -- values ----------------------------------------------------------------------------------


TYPED_VALUES = (
    "123456789012, 1.5, 0.1, 0.30000000000000004, true, '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', "
    "'2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02', '2024-02-29', '13:14:15', "
    "'1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x6162', ARRAY['x', 'y'], 7, 'happy', "
    "'varchar', 'ab'"
)


def test_snapshot_and_stream_give_identical_values(postgres, source_db):
    database, conn = source_db
    execute(
        conn,
        "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        "CREATE TABLE typed (id int PRIMARY KEY, i8 bigint, n numeric(10,3), f4 real, f8 double precision, "
        "b boolean, j json, jb jsonb, ts timestamp(6), tstz timestamptz, d date, t time, iv interval, u uuid, "
        "by bytea, arr text[], dom positive, m mood, vc varchar(20), c char(3))",
        f"INSERT INTO typed VALUES (1, {TYPED_VALUES})",
    )
    source = connector(postgres, database)
    task_id, info, position, (snapshot_row,) = open_stream(source, "typed")
    execute(conn, f"INSERT INTO typed VALUES (2, {TYPED_VALUES})")

    changes = stream(source, info, position, task_id)
    try:
        (change,) = next_changes(iter(changes)).changes
    finally:
        changes.close()

    assert change.op == "upsert" and change.key == (2,)
    streamed = dict(change.row, id=1)
    assert streamed == snapshot_row
    assert snapshot_row["n"] == "1.500" and snapshot_row["i8"] == 123456789012 and snapshot_row["b"] is True
    assert snapshot_row["f4"] == 0.1 and snapshot_row["f8"] == 0.30000000000000004
    assert snapshot_row["j"] == {"a": [1, 2]} and snapshot_row["jb"] == {"b": {"c": None}}
    assert snapshot_row["ts"] == "2024-01-02 03:04:05.123456"
    assert snapshot_row["tstz"] == "2024-01-02 01:04:05.123456"  # in UTC, like MySQL TIMESTAMPs
    assert snapshot_row["d"] == "2024-02-29" and snapshot_row["t"] == "13:14:15"
    assert snapshot_row["by"] == "ab" and snapshot_row["arr"] == ["x", "y"]
    assert snapshot_row["dom"] == 7 and snapshot_row["m"] == "happy" and snapshot_row["c"] == "ab "


# -- TOAST -----------------------------------------------------------------------------------


def test_unchanged_toast_values_are_read_back_not_lost(postgres, source_db):
    """An update of another column sends the big value as 'unchanged': the change must still
    carry it (from the table, or from the old row with REPLICA IDENTITY FULL)."""
    database, conn = source_db
    big = random_text(8000)
    execute(conn, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, stars int)")
    execute(conn, "INSERT INTO docs VALUES (1, 't', %s, 0), (2, 'u', %s, 0)", params=(big, big[::-1]))
    with conn.cursor() as cur:
        cur.execute("SELECT pg_column_size(body) FROM docs WHERE id = 1")
        assert cur.fetchone()[0] >= 8000  # stored out of line and uncompressed
    source = connector(postgres, database)
    task_id, info, position, _ = open_stream(source, "docs")
    changes = stream(source, info, position, task_id)
    fetched: list[list[str]] = []
    fill = changes._fill_unchanged

    def spy(pending):
        fetched.extend(missing for _, missing in pending.unchanged)
        fill(pending)

    changes._fill_unchanged = spy
    batches = iter(changes)
    try:
        execute(conn, "UPDATE docs SET stars = 1 WHERE id = 1")
        (change,) = next_changes(batches, acknowledge=changes.acknowledge).changes
        assert fetched == [["body"]], "the update should have arrived without the unchanged TOAST value"
        assert change.row == {"id": 1, "title": "t", "body": big, "stars": 1}

        # A row deleted after the update: its update is dropped, the delete follows.
        execute(conn, "UPDATE docs SET stars = 2 WHERE id = 2", "DELETE FROM docs WHERE id = 2")
        # The update's transaction comes out empty: the row it needed a value of is gone.
        (change,) = next_changes(batches, acknowledge=changes.acknowledge).changes
        assert (change.op, change.key) == ("delete", (2,))

        # REPLICA IDENTITY FULL: the old row carries the value; nothing is read back.
        execute(conn, "ALTER TABLE docs REPLICA IDENTITY FULL")
        fetched.clear()
        execute(conn, "UPDATE docs SET stars = 3 WHERE id = 1")
        (change,) = next_changes(batches, acknowledge=changes.acknowledge).changes
        assert fetched == []
        assert change.row["body"] == big and change.before["stars"] == 1
    finally:
        changes.close()


def test_updating_another_column_neither_loses_nor_re_embeds_a_toasted_text(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(20, template="{title}\n\n{body}", payload=["name", "stars"])
    big = random_text(6000)
    execute(conn, "UPDATE docs SET body = %s WHERE id = 3", params=(big,))
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE,
               timeout=120, message="snapshot")
    wait_converged(task, conn)
    model = get_embedder()
    calls_before = model.texts_embedded

    execute(conn, "UPDATE docs SET stars = 4242 WHERE id = 3")
    wait_until(lambda: target_rows(task)[3]["stars"] == 4242, timeout=30, message="the update")

    assert model.texts_embedded == calls_before  # same text: the stored vector is reused
    point = target_rows(task)[3]
    assert point["_text"] == expected_text(source_rows(conn)[3], task.text_template)
    assert big in point["_text"]
    run = runner.stop()
    assert run.status == SyncRun.Status.STOPPED and run.error == "" and run.rows_unchanged >= 1


# -- acknowledging ---------------------------------------------------------------------------


def test_the_slot_forgets_only_what_was_acknowledged(postgres, source_db):
    database, conn = source_db
    execute(conn, "CREATE TABLE docs (id int PRIMARY KEY, title text)")
    source = connector(postgres, database)
    task_id, info, position, _ = open_stream(source, "docs")
    name = replication_name(task_id)
    execute(conn, "INSERT INTO docs VALUES (1, 'one')")

    first = stream(source, info, position, task_id)
    try:
        batch = next_changes(iter(first))
    finally:
        first.close()
    assert [c.key for c in batch.changes] == [(1,)]
    wait_until(lambda: not slot(conn, name)["active"], timeout=10)
    assert slot(conn, name)["confirmed_flush_lsn"] == position["lsn"]  # read, but never acknowledged

    again = stream(source, info, position, task_id)  # so it is read again
    batches = iter(again)
    try:
        batch = next_changes(batches)
        assert [c.key for c in batch.changes] == [(1,)]
        again.acknowledge(batch.position)
        next(batches)  # the reader sends it with its next read
        wait_until(lambda: parse_lsn(slot(conn, name)["confirmed_flush_lsn"]) >= parse_lsn(batch.position["lsn"]),
                   timeout=10, message="the acknowledgement")
    finally:
        again.close()

    execute(conn, "INSERT INTO docs VALUES (2, 'two')")
    last = stream(source, info, position, task_id)  # an old position: the server starts after the ack
    try:
        assert [c.key for c in next_changes(iter(last)).changes] == [(2,)]
    finally:
        last.close()


def test_after_a_restart_the_slot_has_advanced_to_the_checkpoint(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(10, template="{title}")
    name = replication_name(task.pk)
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE,
               timeout=120, message="snapshot")
    start = Checkpoint.objects.get(task=task).stream_position
    assert start["slot"] == name
    execute(conn, "UPDATE docs SET title = 'changed' WHERE id = 1", "DELETE FROM docs WHERE id = 2")
    wait_converged(task, conn, timeout=30)
    runner.stop()

    checkpoint = parse_lsn(Checkpoint.objects.get(task=task).stream_position["lsn"])
    assert checkpoint > parse_lsn(start["lsn"])

    def confirmed() -> int:
        return parse_lsn(slot(conn, name)["confirmed_flush_lsn"])

    wait_until(lambda: confirmed() >= checkpoint, timeout=10, message="the last acknowledgement")

    runner = run_in_thread(task)  # resumes from the checkpoint, on the same slot
    execute(conn, "INSERT INTO docs (id, name, module, kind, title, body) VALUES (99, 'n', 'm', 'k', 'late', 'b')")
    wait_converged(task, conn, timeout=60)
    runner.stop()
    later = parse_lsn(Checkpoint.objects.get(task=task).stream_position["lsn"])
    assert later > checkpoint
    wait_until(lambda: confirmed() >= later, timeout=10, message="the last acknowledgement")


def test_a_restart_confirms_the_checkpoint_an_unsent_acknowledgement_left_behind(postgres, source_db):
    """A runner killed between committing its checkpoint and telling the server: the next one
    confirms the checkpoint it starts from."""
    database, conn = source_db
    execute(conn, "CREATE TABLE docs (id int PRIMARY KEY, title text)")
    source = connector(postgres, database)
    task_id, info, position, _ = open_stream(source, "docs")
    execute(conn, "INSERT INTO docs VALUES (1, 'one')")
    first = stream(source, info, position, task_id)
    try:
        committed = next_changes(iter(first)).position  # stored, "checkpointed", never acknowledged
    finally:
        first.close()
    name = replication_name(task_id)
    assert slot(conn, name)["confirmed_flush_lsn"] == position["lsn"]

    second = stream(source, info, committed, task_id)
    batches = iter(second)
    try:
        next(batches)
        wait_until(lambda: parse_lsn(slot(conn, name)["confirmed_flush_lsn"]) >= parse_lsn(committed["lsn"]),
                   timeout=10, message="the checkpoint confirmed")
    finally:
        second.close()


# -- slots and publications of tasks ---------------------------------------------------------


def test_deleting_a_task_drops_its_slot_and_publication(make_task, source_db, run_in_thread, settings):
    _, conn = source_db
    task = make_task(5, template="{title}")
    name = replication_name(task.pk)
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE,
               timeout=120, message="snapshot")
    execute(conn, "UPDATE docs SET stars = 7 WHERE id = 1")
    wait_until(lambda: target_rows(task)[1]["stars"] == 7, timeout=30)

    status = replication_slot_status(task)
    assert status["exists"] and status["active"] and status["slot"] == name
    assert status["retained_bytes"] > 0 and not status["warn"]
    settings.RSYNC_WAL_WARN_BYTES = 1
    assert replication_slot_status(task)["warn"]

    runner.stop()
    stop_task(task)
    assert slot(conn, name) is not None and publication_exists(conn, name)
    delete_task(task)
    assert slot(conn, name) is None
    assert not publication_exists(conn, name)


def test_a_task_is_not_deleted_while_its_slot_cannot_be_dropped():
    port = devservers.free_port()  # the server is down
    source = save_source(name=unique("source").replace("_", "-"), kind="postgresql", host="127.0.0.1", port=port,
                         database="gone", user="u", password="p")
    store = save_store(name=unique("store").replace("_", "-"), uri="http://127.0.0.1:19530")
    task = save_task(name=unique("task").replace("_", "-"), source=source, store=store, table="docs",
                     text_template="{title}", payload_columns=[], collection=unique("col"))

    with pytest.raises(Unavailable) as refused:
        delete_task(task)

    name = replication_name(task.pk)
    assert f"SELECT pg_drop_replication_slot('{name}'); DROP PUBLICATION {name};" in str(refused.value)
    assert SyncTask.objects.filter(pk=task.pk).exists()  # kept: it still points at its slot


def test_a_snapshot_only_task_keeps_no_slot(make_task, source_db):
    _, conn = source_db
    task = make_task(5, mode="full", template="{title}")
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert slot(conn, replication_name(task.pk)) is None
    assert Checkpoint.objects.get(task=task).stream_position["slot"] is None
    assert replication_slot_status(task) == {
        "exists": False, "slot": None, "active": False, "retained_bytes": 0, "warn": False,
    }


def test_an_incremental_task_streams_from_its_first_start(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(5, mode="incremental", template="{title}")
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).stream_position is not None, timeout=60,
               message="the stream's start")
    assert slot(conn, replication_name(task.pk)) is not None
    execute(conn, "INSERT INTO docs (id, name, module, kind, title, body) VALUES (50, 'n', 'm', 'k', 'new', 'b')",
            "UPDATE docs SET title = 'touched' WHERE id = 1")
    wait_until(lambda: set(target_rows(task)) == {1, 50}, timeout=60, message="the new rows")
    assert target_rows(task)[1]["_text"] == "touched"
    runner.stop()


def test_the_source_page_shows_each_slots_retained_wal(make_task, source_db, run_in_thread, client, settings):
    from django.contrib.auth.models import User

    _, conn = source_db
    task = make_task(5, template="{title}")
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE,
               timeout=120, message="snapshot")
    runner.stop()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw-root-123"))
    page = client.get(f"/sources/{task.source_id}/edit/").content.decode()
    assert replication_name(task.pk) in page and "Retained WAL" in page and "growing" not in page
    settings.RSYNC_WAL_WARN_BYTES = -1  # any retained WAL is too much: the page warns
    assert "growing: start the task or delete it" in client.get(f"/sources/{task.source_id}/edit/").content.decode()
