"""Timestamp polling (the seed's "simple sync", fixed): rows sharing a timestamp across a page
boundary are never skipped, late commits inside the overlap window are seen, soft deletes delete,
hard deletes are not seen (and the task says so), and it survives kill -9 like the log readers."""

import datetime as dt
import sqlite3

import pytest

from datasources.connectors.base import normalize_value
from datasources.connectors.polling import task_source_connector
from datasources.services import save_source, save_store
from tasks.models import Checkpoint
from tasks.services import save_task

from .conftest import unique
from .helpers import target_rows, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def capture() -> str:
    """Every task `make_task` builds here polls (conftest's POLLING: a deleted_at column added)."""
    return "poll"


def make_polling_task(make_task, conn, rows=20, **options):
    # Pages of 5 rows; a short overlap window.
    return make_task(rows, template="{title}", batch_size=5, **{"overlap_seconds": 2.0, **options})


def visible_source_keys(conn) -> set:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM docs WHERE deleted_at IS NULL")
        return {row[0] for row in cur.fetchall()}


def source_now(conn, seconds: float = 0.0) -> dt.datetime:
    """The source's clock (what it stamps rows with), moved by `seconds`."""
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_TIMESTAMP(6)")
        return cur.fetchone()[0] + dt.timedelta(seconds=seconds)


def insert_stamped(conn, ids, stamp, title: str = "Same time") -> None:
    """Rows stamped `stamp` by hand (as a writer with its own clock, or one transaction, does)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO docs (id, name, module, kind, title, body, updated_at) "
            "VALUES (%s, 'n', 'm', 'k', %s, 'b', %s)",
            [(i, f"{title} {i}", stamp) for i in ids],
        )


def one_poll(stream) -> list:
    """The batches of one poll (the stream turns to heartbeats once it has read everything)."""
    batches = []
    for batch in stream:
        if batch.position is None:
            return batches
        batches.append(batch)
    return batches


def keys_of(batches) -> list:
    return [change.key[0] for batch in batches for change in batch.changes]


def test_pages_never_skip_rows_sharing_a_timestamp_and_resume_from_the_pair(make_task, source_db):
    """Twelve rows share one timestamp and pages hold five: the seed's `WHERE updated_at > last
    LIMIT n` reads the first page, moves to that timestamp and never sees the other seven."""
    _, conn = source_db
    task = make_polling_task(make_task, conn, rows=0, overlap_seconds=0.0)
    stamp = source_now(conn, -60)
    insert_stamped(conn, range(500, 512), stamp)
    source = task_source_connector(task)
    table = source.describe_table("docs")
    start = {"ts": normalize_value(stamp - dt.timedelta(seconds=1)), "pk": None}

    stream = source.change_stream(table, start, task_id=task.pk, heartbeat=0.05, read_timeout=1)
    batches = one_poll(stream)
    assert keys_of(batches) == list(range(500, 512))  # each row once, in (updated_at, id) order
    assert [len(b.changes) for b in batches] == [5, 5, 2]
    # The position is the (updated_at, key) pair of the last row read...
    assert [b.position for b in batches] == [{"ts": normalize_value(stamp), "pk": [k]} for k in (504, 509, 511)]

    # ...and a stream resumed from a page boundary inside the timestamp reads exactly the rest.
    resumed = source.change_stream(table, batches[0].position, task_id=task.pk, heartbeat=0.05, read_timeout=1)
    assert keys_of(one_poll(resumed)) == list(range(505, 512))


def test_the_overlap_window_catches_late_commits_without_rereading_everything(make_task, source_db):
    _, conn = source_db
    task = make_polling_task(make_task, conn, rows=0, overlap_seconds=5.0)
    stamp = source_now(conn, -60)
    insert_stamped(conn, range(500, 512), stamp)
    source = task_source_connector(task)
    table = source.describe_table("docs")
    stream = source.change_stream(table, {"ts": None, "pk": None}, task_id=task.pk, heartbeat=0.05, read_timeout=1)
    assert keys_of(one_poll(stream)) == list(range(500, 512))

    # Committed after the poll read past it, stamped earlier (a long transaction), inside the window.
    insert_stamped(conn, [700], stamp - dt.timedelta(seconds=2), title="Late commit")
    insert_stamped(conn, [701], stamp - dt.timedelta(seconds=30), title="Too late")  # outside: lost
    batches = one_poll(stream)
    assert keys_of(batches) == [700]  # the window's other rows are unchanged: not delivered again
    assert batches[-1].position == {"ts": normalize_value(stamp), "pk": [511]}

    with conn.cursor() as cur:  # a row of the window changed since: delivered again
        cur.execute("UPDATE docs SET title = 'Changed', updated_at = %s WHERE id = 503", (stamp,))
    assert keys_of(one_poll(stream)) == [503]


def test_polling_follows_inserts_updates_and_soft_deletes(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_polling_task(make_task, conn)
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=60)
    wait_until(lambda: set(target_rows(task)) == visible_source_keys(conn), timeout=30)

    # Twelve rows with one and the same timestamp: pages of 5 end in the middle of them.
    insert_stamped(conn, range(500, 512), source_now(conn))
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET title = 'Polled update' WHERE id = 2")
        cur.execute("UPDATE docs SET deleted_at = NOW() WHERE id = 3")
    wait_until(lambda: set(target_rows(task)) == visible_source_keys(conn), timeout=30, message="polled changes")
    assert target_rows(task)[2]["_text"] == "Polled update"
    position = Checkpoint.objects.get(task=task).stream_position
    assert position["pk"] is not None and len(position["pk"]) == 1, position

    with conn.cursor() as cur:  # a hard delete is not seen by polling: documented, not hidden
        cur.execute("DELETE FROM docs WHERE id = 4")
    run = runner.stop()
    assert 4 in target_rows(task)
    assert run.rows_failed == 0


def test_rows_stamped_in_the_future_do_not_freeze_polling(make_task, source_db, run_in_thread):
    """A row stamped ahead of the source's clock must not carry the position past the present:
    every row written afterwards, stamped truly, would fall behind it and never be read."""
    _, conn = source_db
    task = make_polling_task(make_task, conn)
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=60)
    insert_stamped(conn, range(500, 503), "2030-01-01 00:00:00", title="From the future")
    wait_until(lambda: {500, 501, 502} <= set(target_rows(task)), timeout=30, message="future-stamped rows")

    with conn.cursor() as cur:  # written now, stamped now: after the future rows were read
        cur.execute("UPDATE docs SET title = 'Polled update' WHERE id = 2")
        cur.execute("UPDATE docs SET deleted_at = NOW() WHERE id = 3")
    wait_until(lambda: set(target_rows(task)) == visible_source_keys(conn), timeout=30, message="polled changes")
    assert target_rows(task)[2]["_text"] == "Polled update"
    position = Checkpoint.objects.get(task=task).stream_position
    assert position["ts"] < "2030", position

    run = runner.stop()
    notices = [n for n in run.notices if "later than the source's clock" in n]
    assert notices and "3 row(s)" in notices[0] and "2030-01-01" in notices[0], run.notices


def test_polling_needs_its_columns(make_task, source_db):
    from tasks.services import source_check_failures

    _, conn = source_db
    task = make_polling_task(make_task, conn)  # saving checks the columns: the table changes afterwards
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE docs CHANGE updated_at changed DATETIME(6) NOT NULL")
        cur.execute("ALTER TABLE docs CHANGE deleted_at gone DATETIME(6) NULL")
    failures = source_check_failures(task)
    assert any("no column 'updated_at' to poll by" in f for f in failures), failures
    assert any("no soft-delete column 'deleted_at'" in f for f in failures), failures


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
