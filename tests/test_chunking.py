"""Long text cut into chunks: stable ids, row key in the payload, stale chunks removed after the
new ones are written."""

import pytest

from datasources.connectors import target_connector
from datasources.connectors.base import Change, ConnectorError, Unavailable
from datasources.connectors.milvus import CHUNK_FIELD, KEY_FIELD, ROW_KEY_FIELD, TEXT_FIELD
from datasources.connectors.polling import task_source_connector
from datasources.embedders import get_embedder
from tasks.models import Checkpoint
from tasks.pipeline import BatchProcessor, Chunker, TaskMapping

from .helpers import source_rows, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG = " ".join(f"Sentence number {i} explains one more detail of the module." for i in range(60))
REVISED = " ".join(f"Revised sentence {i} tells the reader something else entirely." for i in range(30))


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


class FaultyStore:
    """The task's real store, failing once in a chosen way: refusing any call that writes the
    point `refuse` (as a store refuses a point it cannot take), or losing the connection on the
    first `upsert` or `delete` (`drop`)."""

    def __init__(self, target, *, refuse: str | None = None, drop: str | None = None) -> None:
        self.target, self.refuse, self.drop = target, refuse, drop

    def __getattr__(self, name):
        return getattr(self.target, name)

    def _maybe_drop(self, method: str) -> None:
        if self.drop == method:
            self.drop = None
            raise Unavailable(f"connection lost during {method}")

    def upsert(self, name, rows):
        if self.refuse is not None and any(row[KEY_FIELD] == self.refuse for row in rows):
            raise ConnectorError(f"the store refused point {self.refuse}")
        self._maybe_drop("upsert")
        return self.target.upsert(name, rows)

    def delete(self, name, keys):
        self._maybe_drop("delete")
        return self.target.delete(name, keys)


@pytest.fixture
def chunked(make_task, source_db):
    """A chunked task over three rows, and `write(ids, store=None)`: the rows' current state
    through the real pipeline (prepare, then write to the store or a `FaultyStore` around it)."""
    _, conn = source_db
    task = make_task(3, template="{body}")
    task.chunk_size, task.chunk_overlap = 32, 8
    task.save()
    source = task_source_connector(task)
    mapping = TaskMapping.build(task, source.describe_table(task.table))
    embedder = get_embedder()
    target = target_connector(task.store)
    target.ensure_collection(mapping.collection_spec(embedder.dimension))

    def write(ids, store=None):
        rows = source_rows(conn, where=f"id IN ({', '.join(map(str, ids))})")
        processor = BatchProcessor(mapping, embedder, store or target)
        batch = processor.prepare([Change("upsert", (key,), row) for key, row in rows.items()])
        processor.write(batch)
        return batch

    yield task, conn, target, write
    target.close()


def texts(task, row: str) -> dict:
    return {number: point[TEXT_FIELD] for number, point in chunks_by_row(task).get(row, {}).items()}


def test_a_row_the_store_refuses_keeps_its_old_chunks_whole(chunked):
    task, conn, target, write = chunked
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET body = %s WHERE id IN (1, 2)", (LONG,))
    write([1, 2, 3])
    before = texts(task, "1")
    assert len(before) > 3

    with conn.cursor() as cur:  # both long rows change; the store refuses one chunk of row 1
        cur.execute("UPDATE docs SET body = %s WHERE id = 1", (REVISED,))
        cur.execute("UPDATE docs SET body = 'Now a short body.' WHERE id = 2")
    batch = write([1, 2], FaultyStore(target, refuse="1#1"))
    assert [letter.key for letter in batch.dead] == [[1]] and "refused point 1#1" in batch.dead[0].error
    assert batch.counters.upserted == 1 and batch.counters.failed == 1
    # Row 1 is its old text, whole: no new chunk mixed in, no old chunk deleted.
    assert texts(task, "1") == before
    assert texts(task, "2") == {0: "Now a short body."}  # the rest of the batch landed

    write([1])  # the store takes it now: row 1 becomes its new text, whole
    assert texts(task, "1") == dict(enumerate(Chunker(get_embedder(), size=32, overlap=8).split(REVISED)))


def test_new_chunks_are_written_before_stale_ones_are_deleted(chunked):
    task, conn, target, write = chunked
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET body = %s WHERE id = 1", (LONG,))
    write([1])
    before = texts(task, "1")
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET body = 'Now a short body.' WHERE id = 1")

    with pytest.raises(Unavailable):  # lost while writing the new chunks: nothing was deleted yet
        write([1], FaultyStore(target, drop="upsert"))
    assert texts(task, "1") == before

    with pytest.raises(Unavailable):  # lost between the two: the new text is there, stale chunks too
        write([1], FaultyStore(target, drop="delete"))
    assert texts(task, "1") == {**before, 0: "Now a short body."}

    write([1])  # the runner replays the batch from its checkpoint: the stale chunks go
    assert texts(task, "1") == {0: "Now a short body."}
