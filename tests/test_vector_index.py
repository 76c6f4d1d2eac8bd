"""Vector index settings per task: chosen through the API, built by a real snapshot into Milvus Lite
and Qdrant local mode, read back from the store; combinations a store does not offer are a 400.

Milvus Lite keeps only an index's type and metric (its manifest stores `build_params: {}` and
`describe_index` reports none), so HNSW's M / efConstruction and IVF's nlist are checked on the
request that reaches the server; a Milvus server reports them back, and `_verify_index` compares
them then.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from datasources.connectors.milvus import VECTOR_FIELD
from datasources.connectors.qdrant import QdrantTarget
from datasources.services import save_source, save_store
from rsync_admin.corpus import create_docs_table
from tasks.lookups import search
from tasks.models import SyncRun, SyncTask
from tasks.runner import TaskRunner
from tasks.services import mark_running

from .conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 40


@pytest.fixture
def api() -> APIClient:
    from django.contrib.auth.models import Group

    from accounts.roles import ADMIN, sync_role_groups

    sync_role_groups()
    admin = get_user_model().objects.create_user("indexer", password="indexer-pw-1234")
    admin.groups.add(Group.objects.get(name=ADMIN))
    client = APIClient()
    client.force_login(admin)
    return client


@pytest.fixture
def source(mariadb, source_db):
    database, conn = source_db
    create_docs_table(conn, "docs", ROWS)
    return save_source(name=unique("src").replace("_", "-"), host="127.0.0.1", port=mariadb.port,
                       database=database, user="root", password="")


@pytest.fixture
def milvus_store(milvus_server):
    return save_store(name=unique("milvus").replace("_", "-"), kind="milvus",
                      uri=f"http://127.0.0.1:{milvus_server.port}")


@pytest.fixture
def qdrant_store(qdrant_folder):
    return save_store(name=unique("qdrant").replace("_", "-"), kind="qdrant", uri=str(qdrant_folder))


def post_task(api, source, store, **settings):
    body = {"name": unique("task").replace("_", "-"), "source": source.pk, "store": store.pk, "table": "docs",
            "text_template": "{title}\n\n{body}", "payload_columns": ["name"], "mode": "full",
            "collection": unique("col"), **settings}
    return api.post("/api/tasks/", body, format="json")


def create_task(api, source, store, **settings) -> SyncTask:
    response = post_task(api, source, store, **settings)
    assert response.status_code == 201, response.content
    for key, value in settings.items():  # the API answers with what it saved
        assert response.json()[key] == value, key
    return SyncTask.objects.select_related("store").get(pk=response.json()["id"])


def run_snapshot(task: SyncTask) -> SyncRun:
    mark_running(task)
    return TaskRunner(task.pk).run()


def milvus_index(task: SyncTask) -> dict:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=task.store.uri)
    try:
        return client.describe_index(task.collection, VECTOR_FIELD)
    finally:
        client.close()


@pytest.fixture
def index_requests(monkeypatch) -> list[dict]:
    """The vector index parameters each collection creation sends to the (real) Milvus server."""
    from pymilvus import MilvusClient

    sent: list[dict] = []
    create_index = MilvusClient.create_index

    def recording(self, collection_name, index_params, *args, **kwargs):
        for param in index_params:
            if param.field_name == VECTOR_FIELD:
                described = {k: v for k, v in param.to_dict().items() if k not in ("field_name", "index_name")}
                sent.append({"collection": collection_name, **described})
        return create_index(self, collection_name, index_params, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "create_index", recording)
    return sent


def test_hnsw_on_milvus_is_built_as_asked(api, source, milvus_store, index_requests):
    task = create_task(api, source, milvus_store, index_type="HNSW", metric="IP", hnsw_m=8, hnsw_ef_construction=64)
    run = run_snapshot(task)
    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert run.rows_upserted == ROWS

    described = milvus_index(task)
    assert (described["index_type"], described["metric_type"]) == ("HNSW", "IP")
    assert described["total_rows"] == ROWS
    [sent] = index_requests
    assert sent == {"collection": task.collection, "index_type": "HNSW", "metric_type": "IP", "M": 8,
                    "efConstruction": 64}

    # The index is fixed with the collection: a task that now asks for another one is told so.
    response = api.patch(f"/api/tasks/{task.pk}/", {"index_type": "IVF_FLAT"}, format="json")
    assert response.status_code == 200, response.content
    run = run_snapshot(task)
    assert run.status == SyncRun.Status.FAILED
    assert run.error == (
        f"Collection {task.collection!r} is indexed with HNSW by IP but the task asks for IVF_FLAT (nlist=128) by "
        "IP: a different index needs a new collection (change the collection name, or drop this one and take a "
        "new snapshot)."
    )


def test_ivf_flat_on_milvus_is_built_as_asked_and_searchable(api, source, milvus_store, index_requests):
    task = create_task(api, source, milvus_store, index_type="IVF_FLAT", metric="L2", ivf_nlist=16)
    run = run_snapshot(task)
    assert run.status == SyncRun.Status.SUCCEEDED, run.error

    described = milvus_index(task)
    assert (described["index_type"], described["metric_type"]) == ("IVF_FLAT", "L2")
    assert index_requests == [{"collection": task.collection, "index_type": "IVF_FLAT", "metric_type": "L2",
                               "nlist": 16}]
    hits = search(task, "the docstring of a module", limit=3)
    assert len(hits) == 3
    # L2 is a distance: the best hit comes first with the smallest score.
    assert hits[0]["score"] <= hits[1]["score"] <= hits[2]["score"]


def test_defaults_keep_milvus_autoindex_by_cosine(api, source, milvus_store):
    task = create_task(api, source, milvus_store)
    assert (task.index_type, task.metric) == ("AUTOINDEX", "COSINE")
    assert run_snapshot(task).status == SyncRun.Status.SUCCEEDED
    described = milvus_index(task)
    assert (described["index_type"], described["metric_type"]) == ("AUTOINDEX", "COSINE")


def test_hnsw_on_qdrant_is_built_as_asked(api, source, qdrant_store):
    task = create_task(api, source, qdrant_store, index_type="HNSW", metric="IP", hnsw_m=8, hnsw_ef_construction=64)
    run = run_snapshot(task)
    assert run.status == SyncRun.Status.SUCCEEDED, run.error

    target = QdrantTarget(uri=qdrant_store.uri, local_wait=0)
    try:
        vector = target.client.get_collection(task.collection).config.params.vectors[VECTOR_FIELD]
        assert target.count(task.collection) == ROWS
    finally:
        target.close()
    assert vector.distance.value == "Dot"
    assert (vector.hnsw_config.m, vector.hnsw_config.ef_construct) == (8, 64)

    # Other HNSW parameters on the same collection: refused with what it has and what was asked.
    api.patch(f"/api/tasks/{task.pk}/", {"hnsw_m": 32}, format="json")
    run = run_snapshot(task)
    assert run.status == SyncRun.Status.FAILED
    assert run.error.startswith(
        f"Collection {task.collection!r} is indexed with HNSW (M=8, ef_construction=64) by IP but the task asks for "
        "HNSW (M=32, ef_construction=64) by IP:"
    )


def test_combinations_a_store_does_not_offer_are_400_per_field(api, source, milvus_store, qdrant_store):
    cases = [
        (qdrant_store, {"index_type": "IVF_FLAT"},
         {"index_type": ["Qdrant has no IVF_FLAT index: choose AUTOINDEX or HNSW."]}),
        (milvus_store, {"index_type": "DISKANN"}, {"index_type": ['"DISKANN" is not a valid choice.']}),
        (qdrant_store, {"metric": "Dot"}, {"metric": ['"Dot" is not a valid choice.']}),
        (milvus_store, {"index_type": "HNSW", "hnsw_m": 1, "hnsw_ef_construction": 3},
         {"hnsw_m": ["Ensure this value is greater than or equal to 2."],
          "hnsw_ef_construction": ["Ensure this value is greater than or equal to 4."]}),
        (milvus_store, {"index_type": "IVF_FLAT", "ivf_nlist": 70_000},
         {"ivf_nlist": ["Ensure this value is less than or equal to 65536."]}),
        # Each rule reports on its own field, all at once.
        (qdrant_store, {"index_type": "IVF_FLAT", "payload_columns": ["name", "name"]},
         {"index_type": ["Qdrant has no IVF_FLAT index: choose AUTOINDEX or HNSW."],
          "payload_columns": ["Payload column 'name' is listed twice."]}),
    ]
    for store, settings, errors in cases:
        response = post_task(api, source, store, **settings)
        assert response.status_code == 400, settings
        assert response.json() == errors, settings
    assert not SyncTask.objects.exists()

    # Moving a task to a store without its index is refused the same way.
    task = create_task(api, source, milvus_store, index_type="IVF_FLAT")
    response = api.patch(f"/api/tasks/{task.pk}/", {"store": qdrant_store.pk}, format="json")
    assert response.status_code == 400
    assert response.json() == {"index_type": ["Qdrant has no IVF_FLAT index: choose AUTOINDEX or HNSW."]}
    task.refresh_from_db()
    assert task.store_id == milvus_store.pk
