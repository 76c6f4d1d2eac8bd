"""Long text cut into chunks: stable ids, row key in the payload, stale chunks removed after the
new ones are written."""

import pytest

from datasources.connectors import target_connector
from datasources.connectors.milvus import CHUNK_FIELD, KEY_FIELD, ROW_KEY_FIELD, TEXT_FIELD
from datasources.embedders import get_embedder
from tasks.models import Checkpoint
from tasks.pipeline import Chunker

from .helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG = " ".join(f"Sentence number {i} explains one more detail of the module." for i in range(60))


def chunks_by_row(task) -> dict:
    target = target_connector(task.store)
    try:
        if not target.has_collection(task.collection):
            return {}
        rows = list(target.iterate(task.collection, [ROW_KEY_FIELD, CHUNK_FIELD, TEXT_FIELD]))
    finally:
        target.close()
    out: dict = {}
    for row in rows:
        out.setdefault(row[ROW_KEY_FIELD], {})[row[CHUNK_FIELD]] = row
    return out


def test_chunker_respects_size_and_overlap():
    chunker = Chunker(get_embedder(), size=32, overlap=8)
    pieces = chunker.split(LONG)
    assert len(pieces) > 3
    model = get_embedder()
    assert all(model.count_tokens(p) <= 32 for p in pieces)
    assert chunker.split(LONG) == pieces  # stable: the same text, the same chunks
    assert chunker.split("short text") == ["short text"]


def test_chunks_follow_the_row(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(3, template="{body}")
    task.chunk_size, task.chunk_overlap = 32, 8
    task.save()
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET body = %s WHERE id = 2", (LONG,))
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=60)
    stored = chunks_by_row(task)
    assert set(stored) == {"1", "2", "3"}
    long_chunks = stored["2"]
    assert len(long_chunks) > 3 and sorted(long_chunks) == list(range(len(long_chunks)))
    assert all(row[KEY_FIELD] == f"2#{n}" for n, row in long_chunks.items())

    with conn.cursor() as cur:  # the text shrinks: its extra chunks go
        cur.execute("UPDATE docs SET body = 'Now a short body.' WHERE id = 2")
    wait_until(lambda: len(chunks_by_row(task).get("2", {})) == 1, timeout=30, message="stale chunks removed")
    assert chunks_by_row(task)["2"][0][TEXT_FIELD] == "Now a short body."

    with conn.cursor() as cur:  # a deleted row takes all its chunks along
        cur.execute("UPDATE docs SET body = %s WHERE id = 3", (LONG,))
    wait_until(lambda: len(chunks_by_row(task).get("3", {})) > 3, timeout=30)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM docs WHERE id = 3")
    wait_until(lambda: "3" not in chunks_by_row(task), timeout=30, message="chunks of a deleted row removed")
    runner.stop()
