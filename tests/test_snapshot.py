"""Full snapshot of real text into the vector stores, for every pair in `helpers.PAIRS`."""

import pytest

from datasources.connectors import target_connector
from datasources.embedders import get_embedder
from tasks.models import Checkpoint, SyncRun
from tasks.runner import TaskRunner
from tasks.services import mark_running

from .helpers import PAIRS, assert_converged, delete_sql

pytestmark = pytest.mark.django_db(transaction=True)


def search(task, query: str, limit: int = 5) -> list[str]:
    vector = get_embedder().encode([query])[0]
    target = target_connector(task.store)
    try:
        hits = target.search(task.collection, vector, limit=limit, fields=["name"])
    finally:
        target.close()
    return [hit["name"] for hit in hits]


@PAIRS
def test_full_snapshot_of_stdlib_docstrings(make_task, source_db):
    _, conn = source_db
    task = make_task(2000, mode="full", batch_size=256)
    with conn.cursor() as cur:  # rows deleted before the snapshot (marked deleted, for polling) stay out
        cur.execute(delete_sql(task, "id BETWEEN 1001 AND 1010"))
    mark_running(task)
    run = TaskRunner(task.pk).run()

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert run.rows_upserted == 1990 and run.rows_failed == 0
    assert_converged(task, conn)
    assert Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE
    hits = search(task, "parse command-line options")
    assert any(name.split(".")[0] in ("argparse", "getopt") for name in hits[:2]), hits
    assert any(name.startswith("argparse") for name in hits), hits
    hits = search(task, "serialize a Python object to a JSON formatted string")
    assert any(name.split(".")[0] == "json" for name in hits[:3]), hits


def test_resnapshot_reuses_vectors_of_unchanged_rows(make_task, source_db):
    from tasks.services import resnapshot_task

    _, conn = source_db
    task = make_task(300, mode="full")
    mark_running(task)
    first = TaskRunner(task.pk).run()
    assert first.rows_embedded == 300
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET title = CONCAT(title, ' (revised)') WHERE id <= 10")
        cur.execute("UPDATE docs SET stars = stars + 1 WHERE id > 10 AND id <= 30")
    resnapshot_task(task)
    mark_running(task)
    second = TaskRunner(task.pk).run()
    assert second.status == SyncRun.Status.SUCCEEDED, second.error
    assert second.rows_embedded == 10  # only the rows whose text changed
    assert second.rows_unchanged == 290
    assert_converged(task, conn)
