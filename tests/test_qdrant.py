"""The Qdrant target, in local mode in a temporary folder (a real qdrant-client engine, no mocks).

The convergence and crash tests run against Qdrant too (parametrized by `store_kind` in
test_stream.py and test_crash.py); these cover what is Qdrant's own: point ids, local mode's
one-process rule and thread safety, the collection layout and payload indexes, a server down.
"""

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from datasources.connectors.base import Column, ConnectorError, Unavailable
from datasources.connectors.milvus import (
    CHUNK_FIELD,
    HASH_FIELD,
    KEY_FIELD,
    ROW_KEY_FIELD,
    TEXT_FIELD,
    VECTOR_FIELD,
    CollectionSpec,
    VectorIndex,
)
from datasources.connectors.qdrant import KEY_NAMESPACE, QdrantTarget, in_use_message, point_id
from rsync_admin.devservers import free_port

from .helpers import target_rows, wait_converged, wait_until

ROOT = Path(__file__).resolve().parent.parent
DIM = 4


def spec(name: str = "points", *, key_is_integer: bool = False, columns=(), dimension: int = DIM,
         **extra) -> CollectionSpec:
    return CollectionSpec(name=name, key_is_integer=key_is_integer, dimension=dimension,
                          payload_columns=list(columns), **extra)


def row(key, vector, text: str = "", **payload) -> dict:
    return {KEY_FIELD: key, VECTOR_FIELD: vector, TEXT_FIELD: text, HASH_FIELD: f"h-{text}", **payload}


@pytest.fixture
def target(tmp_path):
    target = QdrantTarget(uri=str(tmp_path / "qdrant"), local_wait=0)
    yield target
    target.close()


def test_keys_qdrant_cannot_take_become_uuid5_and_come_back_as_they_were(target):
    keys = ["abc", "ключ", '[1,"x"]', "-5"]
    target.ensure_collection(spec())
    target.upsert("points", [row(k, [1.0, i, 0.0, 0.0], f"text {i}") for i, k in enumerate(keys)])

    # Point ids: uuid5 of "<type>:<key>" in a fixed namespace, so a replay lands on the same point.
    stored = target.client.retrieve("points", [str(uuid.uuid5(KEY_NAMESPACE, f"str:{k}")) for k in keys])
    assert sorted(p.payload[KEY_FIELD] for p in stored) == sorted(keys)
    target.upsert("points", [row("abc", [0.0, 1.0, 0.0, 0.0], "again")])
    assert target.count("points") == len(keys)

    fetched = target.fetch("points", ["abc", '[1,"x"]', "missing"], [HASH_FIELD, VECTOR_FIELD])
    assert set(fetched) == {"abc", '[1,"x"]'}
    assert fetched["abc"][HASH_FIELD] == "h-again" and len(fetched["abc"][VECTOR_FIELD]) == DIM
    assert {r[KEY_FIELD] for r in target.iterate("points", [TEXT_FIELD], batch_size=2)} == set(keys)
    hits = target.search("points", [0.0, 1.0, 0.0, 0.0], limit=1, fields=[])
    assert hits[0]["key"] == "abc" and hits[0][TEXT_FIELD] == "again"

    target.delete("points", ["ключ", "-5"])
    assert {r[KEY_FIELD] for r in target.iterate("points", [])} == {"abc", '[1,"x"]'}
    # TRUNCATE empties the collection in place: it stays there and searchable.
    target.delete_all("points", key_is_integer=False)
    assert target.has_collection("points") and target.count("points") == 0
    assert target.search("points", [1.0, 0.0, 0.0, 0.0], limit=3, fields=[]) == []


def test_unsigned_integer_keys_are_point_ids_and_others_are_mapped(target):
    assert [point_id(k) for k in (0, 7, 2**64 - 1)] == [0, 7, 2**64 - 1]
    for key in (-1, 2**64, "7"):
        assert point_id(key) == str(uuid.uuid5(KEY_NAMESPACE, f"{type(key).__name__}:{key}"))
    assert point_id(-1) != point_id("-1")  # the key's type is part of the name

    target.ensure_collection(spec("ints", key_is_integer=True, columns=[Column("stars", "int")]))
    target.upsert("ints", [row(k, [1.0, 0.0, 0.0, float(i)], stars=i) for i, k in enumerate([3, -3, 0])])
    assert sorted(p.id for p in target.client.scroll("ints", limit=10)[0] if isinstance(p.id, int)) == [0, 3]
    assert {r[KEY_FIELD]: r["stars"] for r in target.iterate("ints", ["stars"])} == {3: 0, -3: 1, 0: 2}
    assert set(target.fetch("ints", [-3, 3, 99], [HASH_FIELD])) == {-3, 3}


@pytest.mark.django_db(transaction=True)
def test_varchar_primary_key_syncs_and_keeps_the_original_keys(make_task, source_db, run_in_thread):
    _, conn = source_db
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE words (code VARCHAR(64) PRIMARY KEY, title VARCHAR(255) NOT NULL, stars INT)")
        cur.executemany("INSERT INTO words VALUES (%s, %s, %s)",
                        [(f"w-{i:03d}", f"word number {i}", i) for i in range(40)] + [("ü/é 1", "accents", 1)])
    task = make_task(table="words", create_table=False, template="{title}", payload=["stars"],
                     batch_size=16, store_kind="qdrant")
    runner = run_in_thread(task)
    wait_converged(task, conn, "words")
    assert "ü/é 1" in target_rows(task)

    with conn.cursor() as cur:
        cur.execute("UPDATE words SET title = 'changed' WHERE code = 'w-001'")
        cur.execute("DELETE FROM words WHERE code IN ('w-002', 'ü/é 1')")
        cur.execute("UPDATE words SET code = 'renamed' WHERE code = 'w-003'")  # a key change
        cur.execute("INSERT INTO words VALUES ('new', 'a new word', NULL)")
    wait_converged(task, conn, "words", timeout=30)
    points = target_rows(task)
    assert points["w-001"][TEXT_FIELD] == "changed" and points["new"]["stars"] is None
    assert not {"w-002", "w-003", "ü/é 1"} & set(points)
    runner.stop()


def record_calls(monkeypatch, client) -> tuple[list[dict], dict[str, str]]:
    """Record collection and payload index creation on their way to the real client: local mode
    keeps no payload indexes (its collection info reports an empty payload schema), so they cannot
    be read back from it. (HNSW settings can: they are set on the vector, which local mode keeps.)"""
    created: list[dict] = []
    indexed: dict[str, str] = {}
    real_create, real_index = client.create_collection, client.create_payload_index

    def create_collection(*args, **kwargs):
        created.append(kwargs)
        return real_create(*args, **kwargs)

    def create_payload_index(collection_name, *, field_name, field_schema, **kwargs):
        indexed[field_name] = field_schema.value
        return real_index(collection_name, field_name=field_name, field_schema=field_schema, **kwargs)

    monkeypatch.setattr(client, "create_collection", create_collection)
    monkeypatch.setattr(client, "create_payload_index", create_payload_index)
    return created, indexed


def test_chunks_are_found_and_deleted_by_their_row(target, monkeypatch):
    _, indexed = record_calls(monkeypatch, target.client)
    target.ensure_collection(spec("chunks", key_is_integer=True, chunked=True))
    assert indexed == {KEY_FIELD: "keyword", ROW_KEY_FIELD: "keyword"}  # chunk keys are "<row key>#<n>"
    chunks = [(1, 0), (1, 1), (1, 2), (2, 0), (-7, 0)]
    target.upsert("chunks", [
        row(f"{r}#{n}", [1.0, float(n), 0.0, 0.0], f"{r}/{n}", **{ROW_KEY_FIELD: str(r), CHUNK_FIELD: n})
        for r, n in chunks
    ])
    found = target.fetch_rows("chunks", [1, -7, 3], [HASH_FIELD, VECTOR_FIELD])
    assert set(found) == {1, -7}  # the caller's own row keys, not their text form
    assert set(found[1]) == {"1#0", "1#1", "1#2"} and found[1]["1#2"][HASH_FIELD] == "h-1/2"
    assert len(found[-7]["-7#0"][VECTOR_FIELD]) == DIM
    target.delete_rows("chunks", ["1", "-7"])
    assert {r[KEY_FIELD] for r in target.iterate("chunks", [])} == {"2#0"}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_a_second_process_is_told_to_run_a_server(tmp_path):
    folder = str(tmp_path / "qdrant")
    probe = f"""
        from datasources.connectors.base import ConnectorError
        from datasources.connectors.qdrant import QdrantTarget
        target = QdrantTarget(uri={folder!r}, local_wait=0)
        print(target.check()[0].message)
        try:
            target.has_collection("points")
            print("opened")
        except ConnectorError as exc:
            print("refused:", exc)
        """
    first = QdrantTarget(uri=folder, local_wait=0)
    second = QdrantTarget(uri=folder, local_wait=0)
    try:
        first.ensure_collection(spec())
        # In one process, targets on a folder share its client (the runner's threads, web requests)...
        assert second.has_collection("points")
        second.close()
        assert first.has_collection("points")
        # ...while another process is refused, with what to do about it.
        result = run_python(probe)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(in_use_message(os.path.realpath(folder))) == 2, result.stdout
        assert "run a Qdrant server for several processes (web + workers)" in result.stdout
    finally:
        first.close()
    # Once every target of this process is closed, the folder is free again.
    result = run_python(probe)
    assert result.returncode == 0, result.stderr
    assert "opened" in result.stdout and "1 collections" in result.stdout, result.stdout


def test_local_mode_calls_from_several_threads_are_serialised(target):
    """The runner fetches from the main thread while its writer thread upserts; local mode's
    engine is not thread-safe (without the lock this fails with SQLite "cannot start a transaction
    within a transaction" or NumPy shape errors), so the target serialises the calls."""
    target.ensure_collection(spec("busy", key_is_integer=True))
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for start in range(0, 200, 20):
                target.upsert("busy", [row(offset + k, [1.0, float(k), 0.5, 0.0]) for k in range(start, start + 20)])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(40):
                target.fetch("busy", list(range(0, 200, 7)), [HASH_FIELD, VECTOR_FIELD])
                target.count("busy")
                target.search("busy", [1.0, 0.0, 0.0, 0.0], limit=3, fields=[])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(0,)), threading.Thread(target=writer, args=(10_000,)),
               threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert target.count("busy") == 400
    assert len(list(target.iterate("busy", []))) == 400


PAYLOAD = [
    Column("stars", "int"), Column("score", "double"), Column("name", "varchar", max_length=255),
    Column("kind", "enum"), Column("updated_at", "datetime"), Column("body", "text"), Column("meta", "json"),
]
EXPECTED_INDEXES = {
    KEY_FIELD: "integer", "stars": "integer", "score": "float", "name": "keyword", "kind": "keyword",
    "updated_at": "keyword",
}


def test_collection_layout_and_payload_indexes(target, monkeypatch):
    client = target.client
    _, indexed = record_calls(monkeypatch, client)
    layout = spec("docs", key_is_integer=True, columns=PAYLOAD,
                  index=VectorIndex(type="HNSW", metric="L2", hnsw_m=32, hnsw_ef_construction=200))
    assert target.ensure_collection(layout) is True
    assert indexed == EXPECTED_INDEXES  # free text and JSON are what the vector is for: no index
    vector = client.get_collection("docs").config.params.vectors[VECTOR_FIELD]
    assert (vector.size, vector.distance.value) == (DIM, "Euclid")
    assert (vector.hnsw_config.m, vector.hnsw_config.ef_construct) == (32, 200)
    # AUTOINDEX leaves the graph to Qdrant's defaults.
    assert target.ensure_collection(spec("auto")) is True
    assert client.get_collection("auto").config.params.vectors[VECTOR_FIELD].hnsw_config is None

    assert target.ensure_collection(layout) is False
    with pytest.raises(ConnectorError, match="holds 4-dimensional vectors but the model makes 8"):
        target.ensure_collection(spec("docs", key_is_integer=True, columns=PAYLOAD, dimension=8, index=layout.index))
    with pytest.raises(ConnectorError, match="compares vectors by Euclid but the task asks for COSINE"):
        target.ensure_collection(spec("docs", key_is_integer=True, columns=PAYLOAD))
    with pytest.raises(ConnectorError, match=r"is indexed with HNSW \(M=32, ef_construction=200\) by L2 but the "
                                             r"task asks for HNSW \(M=16, ef_construction=200\) by L2"):
        target.ensure_collection(spec("docs", key_is_integer=True, columns=PAYLOAD,
                                      index=VectorIndex(type="HNSW", metric="L2", hnsw_ef_construction=200)))
    target.upsert("docs", [row(1, [1.0, 0.0, 0.0, 0.0])])
    with pytest.raises(ConnectorError, match="holds integer keys"):
        target.ensure_collection(spec("docs", key_is_integer=False, columns=PAYLOAD, index=layout.index))


def test_a_server_that_is_down_is_unavailable_so_the_runner_retries():
    uri = f"http://127.0.0.1:{free_port()}"
    target = QdrantTarget(uri=uri, timeout=5)
    try:
        with pytest.raises(Unavailable, match=f"Cannot reach Qdrant at {uri}: is the server running"):
            target.upsert("points", [row(1, [1.0, 0.0, 0.0, 0.0])])
        [result] = target.check()
        assert not result.ok and "Cannot reach Qdrant" in result.message
    finally:
        target.close()
    [result] = QdrantTarget(uri="localhost:6333").check()
    assert not result.ok and "http(s)://host:6333" in result.message


@pytest.mark.django_db(transaction=True)
def test_runner_keeps_the_folder_only_while_it_runs(make_task, source_db, run_in_thread):
    """What the crash test relies on: a stopped runner lets go of the local folder."""
    _, conn = source_db
    task = make_task(30, template="{title}", store_kind="qdrant")
    runner = run_in_thread(task)
    wait_converged(task, conn)
    probe = f"""
        from datasources.connectors.qdrant import QdrantTarget
        print(QdrantTarget(uri={task.store.uri!r}, local_wait=0).check()[0].message)
        """
    assert "already in use by another process" in run_python(probe).stdout
    runner.stop()
    wait_until(lambda: "Opened Qdrant local folder" in run_python(probe).stdout, timeout=10)
