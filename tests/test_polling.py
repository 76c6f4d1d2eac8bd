"""Timestamp polling (the seed's "simple sync", fixed): rows sharing a timestamp across a page
boundary are never skipped, late commits inside the overlap window are seen, soft deletes delete,
hard deletes are not seen (and the task says so), and it survives kill -9 like the log readers."""

import sqlite3

import pytest

from datasources.services import save_source, save_store
from tasks.models import Checkpoint, SyncTask
from tasks.services import save_task

from .conftest import unique
from .helpers import target_rows, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def add_polling_columns(conn):
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE docs ADD COLUMN deleted_at DATETIME NULL")


def make_polling_task(make_task, conn, rows=20, **options):
    task = make_task(rows, template="{title}", batch_size=5)
    add_polling_columns(conn)
    task.capture = SyncTask.Capture.POLL
    task.updated_at_column = "updated_at"
    task.soft_delete_column = "deleted_at"
    task.poll_interval = 0.2
    task.overlap_seconds = 2.0
    for key, value in options.items():
        setattr(task, key, value)
    task.save()
    return task


def visible_source_keys(conn) -> set:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM docs WHERE deleted_at IS NULL")
        return {row[0] for row in cur.fetchall()}


def test_polling_follows_inserts_updates_and_soft_deletes(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_polling_task(make_task, conn)
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=60)
    wait_until(lambda: set(target_rows(task)) == visible_source_keys(conn), timeout=30)

    with conn.cursor() as cur:
        # Twelve rows with one and the same timestamp: pages of 5 end in the middle of them.
        for i in range(12):
            cur.execute("INSERT INTO docs (id, name, module, kind, title, body, updated_at) "
                        "VALUES (%s, 'n', 'm', 'k', %s, 'b', '2030-01-01 00:00:00')", (500 + i, f"Same time {i}"))
        cur.execute("UPDATE docs SET title = 'Polled update' WHERE id = 2")
        cur.execute("UPDATE docs SET deleted_at = NOW() WHERE id = 3")
    wait_until(lambda: set(target_rows(task)) == visible_source_keys(conn), timeout=30, message="polled changes")
    assert target_rows(task)[2]["_text"] == "Polled update"

    with conn.cursor() as cur:  # committed late with an earlier timestamp, inside the overlap window
        cur.execute("INSERT INTO docs (id, name, module, kind, title, body, updated_at) "
                    "VALUES (700, 'n', 'm', 'k', 'Late commit', 'b', '2029-12-31 23:59:59')")
    wait_until(lambda: 700 in target_rows(task), timeout=30, message="the late commit")

    with conn.cursor() as cur:  # a hard delete is not seen by polling: documented, not hidden
        cur.execute("DELETE FROM docs WHERE id = 4")
    run = runner.stop()
    assert 4 in target_rows(task)
    assert run.rows_failed == 0


def test_polling_needs_its_columns(make_task, source_db):
    from tasks.services import source_check_failures

    _, conn = source_db
    task = make_polling_task(make_task, conn, updated_at_column="changed", soft_delete_column="gone")
    failures = source_check_failures(task)
    assert any("no column 'changed' to poll by" in f for f in failures), failures
    assert any("no soft-delete column 'gone'" in f for f in failures), failures


def test_polling_a_sqlite_file(tmp_path, milvus_server, redis_server, run_in_thread):
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT, price REAL, updated_at TEXT)")
    db.executemany("INSERT INTO products VALUES (?, ?, ?, ?)",
                   [(i, f"Product number {i}", i * 1.5, f"2026-01-01 00:00:{i:02d}") for i in range(1, 8)])
    db.commit()
    source = save_source(name=unique("lite").replace("_", "-"), kind="sqlite", host="-", port=1,
                         database=str(path), user="-")
    store = save_store(name=unique("store").replace("_", "-"), uri=f"http://127.0.0.1:{milvus_server.port}")
    task = save_task(name=unique("task").replace("_", "-"), source=source, store=store, table="products",
                     text_template="{title}", payload_columns=["price"], collection=unique("col"),
                     capture="poll", updated_at_column="updated_at", poll_interval=0.2, overlap_seconds=1,
                     batch_size=3)
    assert task.primary_key == ["id"]
    runner = run_in_thread(task)
    wait_until(lambda: sorted(target_rows(task)) == list(range(1, 8)), timeout=60, message="sqlite snapshot")
    db.execute("UPDATE products SET price = 99.5, updated_at = '2026-01-02 00:00:00' WHERE id = 5")
    db.execute("INSERT INTO products VALUES (8, 'Product eight', 8.0, '2026-01-02 00:00:00')")
    db.commit()
    wait_until(lambda: target_rows(task).get(5, {}).get("price") == 99.5 and 8 in target_rows(task), timeout=30)
    runner.stop()
    db.close()


def test_the_task_page_says_hard_deletes_are_not_seen(make_task, source_db, client):
    from django.contrib.auth.models import User

    _, conn = source_db
    task = make_polling_task(make_task, conn)
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw-root-123"))
    page = client.get(f"/tasks/{task.pk}/").content.decode()
    assert "rows removed with DELETE are not seen" in page and "deleted_at" in page
