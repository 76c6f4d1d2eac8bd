"""Change capture into the vector stores, for every pair in `helpers.PAIRS`: the MariaDB binary
log, PostgreSQL logical replication and timestamp polling (which sees deletes through its
soft-delete column: `delete_sql`)."""

import random
import threading
import time

import pytest

from datasources.embedders import get_embedder
from rsync_admin.corpus import insert_rows, rows
from tasks.models import Checkpoint, SyncRun

from .helpers import (
    PAIRS,
    change_key_sql,
    delete_sql,
    source_connection,
    target_rows,
    wait_converged,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


def snapshot_done(task) -> bool:
    return Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE


def execute(conn, *statements):
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


@PAIRS
def test_stream_applies_every_kind_of_change(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(200, batch_size=64, template="{title}")
    runner = run_in_thread(task)
    wait_until(lambda: snapshot_done(task), timeout=120, message="snapshot")
    wait_converged(task, conn)

    insert_rows(conn, "docs", rows(5, start_id=10_001))
    execute(conn, "UPDATE docs SET title = 'Return the sum of two numbers' WHERE id = 3")  # text changes
    execute(conn, delete_sql(task, "id IN (4, 6)"))
    execute(conn, *change_key_sql(task, 5, 20000))  # primary-key change
    execute(  # a multi-row transaction (BEGIN/COMMIT as SQL: the same on both kinds of connection)
        conn,
        "BEGIN",
        "INSERT INTO docs (id, name, module, kind, title, body) VALUES (30001, 'm.a', 'm', 'function', 'Alpha', 'a')",
        "INSERT INTO docs (id, name, module, kind, title, body) VALUES (30002, 'm.b', 'm', 'function', 'Beta', 'b')",
        "UPDATE docs SET title = 'Gamma' WHERE id = 30001",
        delete_sql(task, "id = 7"),
        "COMMIT",
    )
    execute(conn, "BEGIN",  # a rolled-back transaction leaves no trace
            "INSERT INTO docs (id, name, module, kind, title, body) VALUES (40001, 'x', 'x', 'x', 'Nope', 'n')",
            delete_sql(task, "id = 8"), "ROLLBACK")
    wait_converged(task, conn, timeout=30)
    points = target_rows(task)
    assert 40001 not in points and 8 in points and 5 not in points and 20000 in points
    assert points[3]["_text"] == "Return the sum of two numbers"

    # An update that leaves the embedded text unchanged never calls the model.
    model = get_embedder()
    calls_before = model.texts_embedded
    execute(conn, "UPDATE docs SET stars = 999 WHERE id BETWEEN 20 AND 29")
    wait_until(lambda: all(target_rows(task)[k]["stars"] == 999 for k in range(20, 30)), timeout=30)
    assert model.texts_embedded == calls_before
    # ...while a text change calls it once per changed row.
    execute(conn, "UPDATE docs SET title = CONCAT('New: ', title) WHERE id BETWEEN 40 AND 41")
    wait_until(lambda: target_rows(task)[40]["_text"].startswith("New: "), timeout=30)
    assert model.texts_embedded == calls_before + 2

    run = runner.stop()
    assert run.status == SyncRun.Status.STOPPED and run.error == ""
    assert run.rows_unchanged >= 10 and run.rows_failed == 0


@PAIRS
def test_rows_written_during_the_snapshot_are_all_present(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(600, batch_size=25, template="{title}")
    writer_conn = source_connection(task.source)
    stop_writing = threading.Event()
    deleted: list[int] = []

    def write_meanwhile():
        rng = random.Random(7)
        next_id = 50_000
        while not stop_writing.is_set():
            insert_rows(writer_conn, "docs", rows(1, start_id=next_id))
            next_id += 1
            victim = rng.randint(1, 600)
            execute(writer_conn, delete_sql(task, f"id = {victim}"))
            deleted.append(victim)
            execute(writer_conn, f"UPDATE docs SET title = CONCAT(title, '!') WHERE id = {rng.randint(1, 600)}")
            time.sleep(0.02)

    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_rows > 0, timeout=60, message="first chunk")
    writer = threading.Thread(target=write_meanwhile, daemon=True)
    writer.start()
    wait_until(lambda: snapshot_done(task), timeout=300, message="snapshot")
    stop_writing.set()
    writer.join()
    writer_conn.close()
    assert deleted, "the writer should have deleted rows while the snapshot ran"
    # Everything written during the snapshot is embedded only now: slow on a busy machine.
    wait_converged(task, conn, timeout=180)
    assert not set(deleted) & set(target_rows(task))
    runner.stop()


@pytest.mark.parametrize("store_kind", ["milvus", "qdrant"])
def test_truncate_is_applied_and_reported(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(50, template="{title}")
    runner = run_in_thread(task)
    wait_until(lambda: snapshot_done(task), timeout=60)
    execute(conn, "TRUNCATE TABLE docs")
    insert_rows(conn, "docs", rows(3, start_id=900))
    wait_converged(task, conn, timeout=30)
    run = runner.stop()
    assert any("TRUNCATE" in notice for notice in run.notices), run.notices


def test_a_purged_binlog_position_fails_the_run_with_advice(make_task, source_db):
    from tasks.models import Checkpoint
    from tasks.runner import TaskRunner
    from tasks.services import mark_running

    task = make_task(5, mode="incremental", template="{title}")
    Checkpoint.objects.filter(task=task).update(stream_position={"gtid": "0-1-999999999"})
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.FAILED
    assert "re-snapshot the task" in run.error, run.error
