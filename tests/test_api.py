"""The REST API under /api/: CRUD of sources, stores and tasks, the actions, runs, events, auth and
the OpenAPI schema. Bad input gets exact status codes and messages; secrets never come back.

Tests that reach MariaDB, Milvus or Redis use the real servers of `conftest.py`; the rest point
sources at a closed port (the API must then keep working, or answer 503 where the server is needed).
"""

from __future__ import annotations

import json
import socket
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import AuditEvent
from datasources.connectors.milvus import RESERVED_FIELDS
from datasources.models import DataSource, VectorStore
from datasources.services import save_source, save_store
from rsync_admin.corpus import create_docs_table
from tasks.models import DeadLetter, SyncRun, SyncTask
from tasks.services import save_task

from .conftest import unique
from .helpers import expected_text, source_rows, wait_converged

PASSWORD = "s3cr3t-Passw0rd!"
TOKEN = "milvus-t0ken-XYZ"
DOCS_COLUMNS = "body, id, kind, module, name, stars, title, updated_at"


# -- helpers ---------------------------------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (connecting to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data(response) -> dict | list:
    """The response body, after checking that no secret (plain or encrypted) is in it."""
    body = response.content.decode()
    for secret in (PASSWORD, TOKEN, "enc:v1:"):
        assert secret not in body, f"{secret!r} leaked in {response.request['PATH_INFO']}"
    return response.json() if body else None


def celery_queue_length(redis_server) -> int:
    import redis

    return redis.Redis(port=redis_server.port).llen("celery")


def slug(prefix: str) -> str:
    return unique(prefix).replace("_", "-")


@pytest.fixture
def user():
    """An Admin: these tests are about the API's behaviour; tests/test_permissions.py covers rights."""
    from django.contrib.auth.models import Group

    from accounts.roles import ADMIN, sync_role_groups

    sync_role_groups()
    alice = get_user_model().objects.create_user("alice", password="alice-pw-1234")
    alice.groups.add(Group.objects.get(name=ADMIN))
    return alice


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def down_source() -> DataSource:
    """A source whose server is down (refuses connections)."""
    return save_source(name=slug("down"), host="127.0.0.1", port=closed_port(), database="shop",
                       user="reader", password=PASSWORD)


@pytest.fixture
def store() -> VectorStore:
    return save_store(name=slug("store"), uri="http://127.0.0.1:19530", token=TOKEN)


@pytest.fixture
def offline_task(down_source, store) -> SyncTask:
    """A task saved while its source is down (allowed: start checks again)."""
    return save_task(name=slug("task"), source=down_source, store=store, table="docs",
                     text_template="{title}", payload_columns=["name"])


@pytest.fixture
def live_source(mariadb, source_db) -> DataSource:
    database, conn = source_db
    create_docs_table(conn, "docs", 12)
    return save_source(name=slug("live"), host="127.0.0.1", port=mariadb.port, database=database,
                       user="root", password="")


@pytest.fixture
def purge_celery(redis_server):
    """Drop the run messages a test queued without a worker to take them."""
    yield
    from rsync_admin.celery import app

    app.control.purge()


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/sources/", "/api/stores/", "/api/tasks/", "/api/runs/", "/api/tasks/1/start/"])
def test_anonymous_requests_get_401(path):
    response = APIClient().post(path) if path.endswith("start/") else APIClient().get(path)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
def test_token_auth(user, down_source):
    client = APIClient()
    response = client.post("/api/auth/token/", {"username": "alice", "password": "wrong"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["Unable to log in with provided credentials."]}
    response = client.post("/api/auth/token/", {"username": "alice"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"password": ["This field is required."]}

    response = client.post("/api/auth/token/", {"username": "alice", "password": "alice-pw-1234"}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert token == Token.objects.get(user=user).key

    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.get("/api/sources/")
    assert response.status_code == 200
    assert [s["name"] for s in data(response)["results"]] == [down_source.name]

    # Changes made with a token are audited under the token's user (not as "system").
    response = client.post("/api/sources/", {"name": "by-token", "host": "h", "database": "d", "user": "u",
                                             "password": PASSWORD}, format="json")
    assert response.status_code == 201
    event = AuditEvent.objects.filter(object_type="datasources.datasource", object_id=str(data(response)["id"])).get()
    assert (event.action, event.actor_id, event.actor_name) == ("create", user.pk, "alice")
    assert event.diff["password"] == "changed"

    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    response = client.get("/api/sources/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


@pytest.mark.django_db
def test_session_auth_and_api_root(api):
    response = api.get("/api/")
    assert response.status_code == 200
    assert set(response.json()) == {"sources", "stores", "tasks", "runs"}


# -- sources ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_source_crud_keeps_the_password_secret(api):
    port = closed_port()
    response = api.post("/api/sources/", {
        "name": "shop", "host": "db.internal", "port": port, "database": "shop", "user": "reader",
        "password": PASSWORD,
    }, format="json")
    assert response.status_code == 201, response.content
    created = data(response)
    assert "password" not in created
    assert created["password_set"] is True
    assert created["kind"] == "mysql" and created["last_check_ok"] is None
    source = DataSource.objects.get(pk=created["id"])
    assert source.get_password() == PASSWORD and source.password.startswith("enc:v1:")

    assert data(api.get("/api/sources/"))["results"] == [created]
    assert data(api.get(f"/api/sources/{source.pk}/")) == created

    # Omitting the password keeps it.
    response = api.patch(f"/api/sources/{source.pk}/", {"host": "db2.internal"}, format="json")
    assert response.status_code == 200
    assert data(response)["host"] == "db2.internal" and data(response)["password_set"] is True
    assert DataSource.objects.get(pk=source.pk).get_password() == PASSWORD

    # PUT without the password keeps it too; the same name is fine.
    response = api.put(f"/api/sources/{source.pk}/", {
        "name": "shop", "host": "db3.internal", "port": 3307, "database": "shop2", "user": "reader",
    }, format="json")
    assert response.status_code == 200, response.content
    assert DataSource.objects.get(pk=source.pk).get_password() == PASSWORD
    assert DataSource.objects.get(pk=source.pk).port == 3307

    # An empty password clears it.
    response = api.patch(f"/api/sources/{source.pk}/", {"password": ""}, format="json")
    assert data(response)["password_set"] is False
    assert DataSource.objects.get(pk=source.pk).get_password() == ""

    # Names identify objects: they cannot change.
    response = api.patch(f"/api/sources/{source.pk}/", {"name": "other"}, format="json")
    assert response.status_code == 400
    assert data(response) == {"name": ["The name cannot be changed (config files refer to objects by name)."]}

    assert api.delete(f"/api/sources/{source.pk}/").status_code == 204
    assert not DataSource.objects.filter(pk=source.pk).exists()
    assert api.get(f"/api/sources/{source.pk}/").status_code == 404


@pytest.mark.django_db
def test_source_bad_input(api, down_source):
    response = api.post("/api/sources/", {}, format="json")
    assert response.status_code == 400
    required = ["This field is required."]
    assert data(response) == {"name": required, "host": required, "database": required, "user": required}

    base = {"name": "ok-name", "host": "h", "database": "d", "user": "u"}
    cases = [
        ({"port": "abc"}, {"port": ["A valid integer is required."]}),
        ({"port": 70000}, {"port": ["Ensure this value is less than or equal to 65535."]}),
        ({"port": 0}, {"port": ["Ensure this value is greater than or equal to 1."]}),
        ({"kind": "oracle"}, {"kind": ['"oracle" is not a valid choice.']}),
        ({"name": "has space"}, {"name": [
            "Enter a valid \"slug\" consisting of letters, numbers, underscores or hyphens."]}),
        ({"name": down_source.name}, {"name": ["data source with this name already exists."]}),
        ({"password": 12}, None),  # a number is accepted as text
        ({"user": ["a"]}, {"user": ["Not a valid string."]}),
    ]
    for change, errors in cases:
        response = api.post("/api/sources/", {**base, **change, "name": change.get("name", slug("s"))}, format="json")
        if errors is None:
            assert response.status_code == 201, response.content
        else:
            assert response.status_code == 400, change
            assert data(response) == errors, change

    response = api.post("/api/sources/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    response = api.post("/api/sources/", [1, 2], format="json")
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}


@pytest.mark.django_db
def test_unknown_ids_are_404(api):
    not_found = {"detail": "No DataSource matches the given query."}
    for method, path in [
        ("get", "/api/sources/999999/"), ("patch", "/api/sources/999999/"), ("delete", "/api/sources/999999/"),
        ("post", "/api/sources/999999/test/"), ("get", "/api/sources/999999/tables/"),
    ]:
        response = getattr(api, method)(path, format="json")
        assert response.status_code == 404, path
        assert response.json() == not_found, path
    for method, path in [
        ("get", "/api/tasks/999999/"), ("put", "/api/tasks/999999/"), ("delete", "/api/tasks/999999/"),
        ("post", "/api/tasks/999999/start/"), ("post", "/api/tasks/999999/stop/"),
        ("post", "/api/tasks/999999/resnapshot/"), ("get", "/api/tasks/999999/preview/"),
        ("get", "/api/tasks/999999/search/?q=x"), ("get", "/api/tasks/999999/events/"),
        ("get", "/api/tasks/999999/dead-letters/"),
    ]:
        response = getattr(api, method)(path, format="json")
        assert response.status_code == 404, path
        assert response.json() == {"detail": "No SyncTask matches the given query."}, path
    assert api.get("/api/sources/abc/").json() == {"detail": "Not found."}
    assert api.get("/api/stores/999999/").json() == {"detail": "No VectorStore matches the given query."}
    assert api.get("/api/runs/999999/").json() == {"detail": "No SyncRun matches the given query."}


@pytest.mark.django_db
def test_test_connection_of_an_unreachable_host(api, down_source):
    response = api.post(f"/api/sources/{down_source.pk}/test/")
    assert response.status_code == 200
    port = down_source.port
    assert data(response) == [{
        "name": "connect", "ok": False,
        "message": f"Cannot reach the database server at 127.0.0.1:{port} "
                   f"(connection refused: nothing listens on that port).",
    }]
    source = data(api.get(f"/api/sources/{down_source.pk}/"))
    assert source["last_check_ok"] is False and source["last_check_report"][0]["name"] == "connect"

    # What needs the server answers 503 with what is wrong.
    response = api.get(f"/api/sources/{down_source.pk}/tables/")
    assert response.status_code == 503
    assert data(response) == {"detail": f"Cannot reach the database server at 127.0.0.1:{port} "
                                        f"(connection refused: nothing listens on that port)."}


@pytest.mark.django_db(transaction=True)
def test_test_connection_and_tables_of_a_live_source(api, live_source, mariadb):
    response = api.post(f"/api/sources/{live_source.pk}/test/")
    assert response.status_code == 200
    results = data(response)
    assert {r["name"] for r in results} == {"connect", "privileges", "log_bin", "binlog_format",
                                            "binlog_row_image", "binlog_row_metadata"}
    assert all(r["ok"] for r in results), results
    assert results[0]["message"].startswith("Connected to MariaDB ")

    response = api.get(f"/api/sources/{live_source.pk}/tables/")
    assert response.status_code == 200
    tables = data(response)
    assert [t["name"] for t in tables] == ["docs"]
    assert tables[0]["columns"][:2] == [
        {"name": "id", "type": "bigint", "primary_key": True},
        {"name": "name", "type": "varchar", "primary_key": False},
    ]

    # A server that refuses the login is a 400 with its reason (not a 503: retrying will not help).
    wrong = save_source(name=slug("wrong"), host="127.0.0.1", port=mariadb.port, database=live_source.database,
                        user="nobody", password=PASSWORD)
    response = api.get(f"/api/sources/{wrong.pk}/tables/")
    assert response.status_code == 400
    assert data(response) == {
        "detail": f"Access denied for user 'nobody' at 127.0.0.1:{mariadb.port}: wrong user name or password."
    }


# -- stores ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_store_crud_keeps_the_token_secret(api):
    response = api.post("/api/stores/", {"name": "vectors", "uri": "http://milvus:19530", "token": TOKEN},
                        format="json")
    assert response.status_code == 201, response.content
    created = data(response)
    assert "token" not in created and created["token_set"] is True
    store = VectorStore.objects.get(pk=created["id"])
    assert store.get_token() == TOKEN

    response = api.patch(f"/api/stores/{store.pk}/", {"uri": "http://milvus2:19530"}, format="json")
    assert data(response)["uri"] == "http://milvus2:19530" and data(response)["token_set"] is True
    assert VectorStore.objects.get(pk=store.pk).get_token() == TOKEN
    response = api.patch(f"/api/stores/{store.pk}/", {"token": ""}, format="json")
    assert data(response)["token_set"] is False

    response = api.post("/api/stores/", {"name": "vectors", "kind": "pinecone"}, format="json")
    assert response.status_code == 400
    assert data(response) == {
        "name": ["vector store with this name already exists."],
        "kind": ['"pinecone" is not a valid choice.'],
        "uri": ["This field is required."],
    }

    assert data(api.get("/api/stores/"))["count"] == 1
    assert api.delete(f"/api/stores/{store.pk}/").status_code == 204
    assert api.get(f"/api/stores/{store.pk}/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_store_test_connection(api, milvus_server):
    store = save_store(name=slug("store"), uri=f"http://127.0.0.1:{milvus_server.port}")
    response = api.post(f"/api/stores/{store.pk}/test/")
    assert response.status_code == 200
    [result] = data(response)
    assert result["name"] == "connect" and result["ok"] is True
    assert result["message"].startswith("Connected to Milvus; ")
    # The store remembers its last check, as sources do (the dashboard shows it).
    shown = data(api.get(f"/api/stores/{store.pk}/"))
    assert shown["last_check_ok"] is True and shown["last_check_report"][0]["name"] == "connect"


@pytest.mark.django_db
def test_objects_in_use_cannot_be_deleted(api, offline_task):
    response = api.delete(f"/api/sources/{offline_task.source_id}/")
    assert response.status_code == 409
    assert data(response) == {"detail": f"The data source {offline_task.source.name!r} is used by task "
                                        f"{offline_task.name}: delete or move it first."}
    response = api.delete(f"/api/stores/{offline_task.store_id}/")
    assert response.status_code == 409
    assert data(response) == {"detail": f"The vector store {offline_task.store.name!r} is used by task "
                                        f"{offline_task.name}: delete or move it first."}
    assert DataSource.objects.filter(pk=offline_task.source_id).exists()


@pytest.mark.django_db
def test_pagination_and_filters_of_sources(api):
    for i in range(7):
        save_source(name=f"{'alpha' if i % 2 else 'beta'}-{i}", host="h", database="d", user="u")
    response = api.get("/api/sources/?page_size=3")
    page = data(response)
    assert page["count"] == 7 and len(page["results"]) == 3
    assert page["next"].endswith("/api/sources/?page=2&page_size=3") and page["previous"] is None
    last = data(api.get("/api/sources/?page_size=3&page=3"))
    assert [s["name"] for s in last["results"]] == ["beta-6"]
    assert api.get("/api/sources/?page=9").status_code == 404

    names = [s["name"] for s in data(api.get("/api/sources/?name__icontains=ALPHA"))["results"]]
    assert names == ["alpha-1", "alpha-3", "alpha-5"]
    assert data(api.get("/api/sources/?name=beta-4"))["count"] == 1
    assert data(api.get("/api/sources/?last_check_ok=false"))["count"] == 0
    response = api.get("/api/sources/?kind=oracle")
    assert response.status_code == 400
    assert response.json() == {"kind": ["Select a valid choice. oracle is not one of the available choices."]}


# -- tasks -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_task_crud_against_the_live_catalog(api, live_source, store):
    body = {"name": "docs-sync", "source": live_source.pk, "store": store.pk, "table": "docs",
            "text_template": "{title}\n\n{body}", "payload_columns": ["name", "stars"]}
    response = api.post("/api/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    task = data(response)
    assert task["primary_key"] == ["id"] and task["collection"] == "docs_sync"
    assert task["desired_state"] == "stopped" and task["mode"] == "full+incremental" and task["batch_size"] == 256

    assert data(api.get("/api/tasks/"))["results"] == [task]
    response = api.patch(f"/api/tasks/{task['id']}/", {"batch_size": 64, "mode": "full"}, format="json")
    assert response.status_code == 200
    assert data(response)["batch_size"] == 64 and data(response)["mode"] == "full"

    # Each problem is reported on its own field, with the table's columns.
    cases = [
        ({"table": "nope"}, {"table": [
            f"Table 'nope' does not exist in database {live_source.database!r} (or the user cannot see it)."]}),
        ({"text_template": "{title} {missing}"}, {"text_template": [
            f"The text template names column 'missing' that 'docs' does not have (it has: {DOCS_COLUMNS})."]}),
        ({"payload_columns": ["name", "x", "y"]}, {"payload_columns": [
            f"Payload columns 'x', 'y' do not exist in 'docs' (it has: {DOCS_COLUMNS})."]}),
        ({"text_template": "{title"}, {"text_template": [
            "Not a valid template: expected '}' before end of string. "
            "Put column names in braces, e.g. {title}; write {{ for a brace."]}),
        ({"text_template": "{} and {0}"}, {"text_template": [
            "Name a column in every pair of braces, e.g. {title}; write {{ and }} for literal braces."]}),
        ({"text_template": "constant"}, {"text_template": [
            "The template names no column: put column names in braces, e.g. {title}\\n\\n{body}."]}),
        ({"payload_columns": ["_text"]}, {"payload_columns": [
            f"'_text' clashes with a field Milvus keeps for itself ({', '.join(sorted(RESERVED_FIELDS))})."]}),
        ({"payload_columns": ["title-x"]}, {"payload_columns": [
            "'title-x' cannot be a Milvus field name: Milvus takes letters, digits and underscores, starting with "
            "a letter or underscore (rename the column in a view)."]}),
        ({"payload_columns": "name"}, {"payload_columns": ['Expected a list of items but got type "str".']}),
        ({"payload_columns": ["name", "name"]}, {"payload_columns": ["Payload column 'name' is listed twice."]}),
        ({"batch_size": "many"}, {"batch_size": ["A valid integer is required."]}),
        ({"batch_size": 0}, {"batch_size": ["Ensure this value is greater than or equal to 1."]}),
        ({"mode": "sometimes"}, {"mode": ['"sometimes" is not a valid choice.']}),
        ({"embedding_model": "gpt"}, {"embedding_model": ['"gpt" is not a valid choice.']}),
        ({"collection": "has-dash"}, {"collection": [
            "Use letters, digits and underscores, starting with a letter or underscore."]}),
        ({"source": 999999}, {"source": ['Invalid pk "999999" - object does not exist.']}),
        ({"store": "abc"}, {"store": ["Incorrect type. Expected pk value, received str."]}),
        ({"name": "renamed"}, {"name": ["The name cannot be changed (config files refer to tasks by name)."]}),
    ]
    for change, errors in cases:
        response = api.patch(f"/api/tasks/{task['id']}/", change, format="json")
        assert response.status_code == 400, change
        assert data(response) == errors, change
    # Creating reports the same, and missing fields each by name.
    response = api.post("/api/tasks/", {**body, "name": "other", "text_template": "{nope}"}, format="json")
    assert response.status_code == 400
    assert list(data(response)) == ["text_template"]
    response = api.post("/api/tasks/", {"name": "docs-sync"}, format="json")
    assert data(response) == {
        "name": ["sync task with this name already exists."], "source": ["This field is required."],
        "store": ["This field is required."], "table": ["This field is required."],
        "text_template": ["This field is required."],
    }

    saved = SyncTask.objects.get(pk=task["id"])
    assert (saved.text_template, saved.payload_columns, saved.batch_size) == (
        "{title}\n\n{body}", ["name", "stars"], 64)

    response = api.put(f"/api/tasks/{task['id']}/", {**body, "text_template": "{name}: {title}"}, format="json")
    assert response.status_code == 200
    assert data(response)["text_template"] == "{name}: {title}"

    assert api.delete(f"/api/tasks/{task['id']}/").status_code == 204
    assert not SyncTask.objects.filter(pk=task["id"]).exists()


@pytest.mark.django_db
def test_a_task_can_be_saved_while_its_source_is_down(api, down_source, store):
    response = api.post("/api/tasks/", {
        "name": "later", "source": down_source.pk, "store": store.pk, "table": "docs", "text_template": "{title}",
    }, format="json")
    assert response.status_code == 201, response.content
    assert data(response)["primary_key"] == [] and data(response)["payload_columns"] == []
    # The same policy as the console and config files: saved, with a warning saying what was not checked.
    assert data(response)["warnings"] == [
        f"Table 'docs' and its columns were not checked: Cannot reach the database server at "
        f"127.0.0.1:{down_source.port} (connection refused: nothing listens on that port). The task is saved; "
        "it will not start until the source answers and the check passes."
    ]
    assert data(api.get(f"/api/tasks/{data(response)['id']}/"))["warnings"] == []

    # Starting it checks again: the source must answer.
    response = api.post(f"/api/tasks/{data(response)['id']}/start/")
    assert response.status_code == 400
    assert data(response) == {"detail": f"Cannot reach the database server at 127.0.0.1:{down_source.port} "
                                        f"(connection refused: nothing listens on that port)."}


@pytest.mark.django_db(transaction=True)
def test_start_refuses_a_table_without_primary_key(api, live_source, store, source_db):
    _, conn = source_db
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (body TEXT, author VARCHAR(50))")
    response = api.post("/api/tasks/", {"name": "notes", "source": live_source.pk, "store": store.pk,
                                        "table": "notes", "text_template": "{body}"}, format="json")
    assert response.status_code == 201, response.content  # saving is allowed; starting is not
    task_id = data(response)["id"]
    response = api.post(f"/api/tasks/{task_id}/start/")
    assert response.status_code == 400
    assert data(response) == {
        "detail": "Table 'notes' has no primary key: rows could not be matched to vectors; add one."
    }
    assert not SyncRun.objects.filter(task_id=task_id).exists()

    response = api.get(f"/api/tasks/{task_id}/preview/")
    assert response.status_code == 400
    assert data(response) == {"detail": "Table 'notes' has no primary key."}


@pytest.mark.django_db(transaction=True)
def test_start_stop_resnapshot_and_delete(api, make_task, redis_server, purge_celery):
    task = make_task(3)
    response = api.post(f"/api/tasks/{task.pk}/start/")
    assert response.status_code == 202, response.content
    run = data(response)
    assert run["task"] == task.pk and run["task_name"] == task.name and run["status"] == "queued"
    assert celery_queue_length(redis_server) == 1, "the run was handed to Celery"
    # A second start returns the same run.
    assert data(api.post(f"/api/tasks/{task.pk}/start/"))["id"] == run["id"]
    assert data(api.get(f"/api/tasks/{task.pk}/"))["desired_state"] == "running"

    response = api.delete(f"/api/tasks/{task.pk}/")
    assert response.status_code == 409
    assert data(response) == {
        "detail": f"Task {task.name!r} is running: stop it first and delete it once its run has ended."
    }

    response = api.post(f"/api/tasks/{task.pk}/resnapshot/")
    assert response.status_code == 200
    assert data(response) == {"detail": f"The next run of {task.name} reads table docs again; unchanged rows are "
                                        f"not embedded again. The task is running: stop and start it to begin now."}

    response = api.post(f"/api/tasks/{task.pk}/stop/")
    assert response.status_code == 200
    assert data(response)["desired_state"] == "stopped"
    assert SyncRun.objects.get(pk=run["id"]).status == SyncRun.Status.STOPPED

    assert api.delete(f"/api/tasks/{task.pk}/").status_code == 204
    assert not SyncRun.objects.filter(pk=run["id"]).exists()


# -- previews, search, events ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_preview_of_a_task_and_of_a_draft(api, make_task, source_db):
    _, conn = source_db
    task = make_task(12, template="{title}\n\n{body}")
    rows = source_rows(conn)
    response = api.get(f"/api/tasks/{task.pk}/preview/")
    assert response.status_code == 200
    preview = data(response)
    assert len(preview) == 5
    for item, key in zip(preview, sorted(rows)[:5]):
        assert item["key"] == [key] and item["error"] == ""
        assert item["text"] == expected_text(rows[key])
        assert item["payload"] == {c: rows[key][c] for c in ("name", "module", "stars")}

    draft = {"source": task.source_id, "table": "docs", "text_template": "{name}: {title}", "payload_columns": ["kind"]}
    response = api.post("/api/tasks/preview/", draft, format="json")
    assert response.status_code == 200, response.content
    preview = data(response)
    assert len(preview) == 5
    first = rows[min(rows)]
    assert preview[0]["text"] == f"{first['name']}: {first['title']}"
    assert preview[0]["payload"] == {"kind": first["kind"]}

    response = api.post("/api/tasks/preview/", {**draft, "text_template": "{name} {gone}"}, format="json")
    assert response.status_code == 400
    assert data(response) == {"text_template": [
        f"The text template names column 'gone' that 'docs' does not have (it has: {DOCS_COLUMNS})."]}
    response = api.post("/api/tasks/preview/", {"table": 5}, format="json")
    assert response.status_code == 400
    assert data(response) == {"source": ["This field is required."], "text_template": ["This field is required."]}

    down = save_source(name=slug("down"), host="127.0.0.1", port=closed_port(), database="x", user="u")
    response = api.post("/api/tasks/preview/", {**draft, "source": down.pk}, format="json")
    assert response.status_code == 503
    assert data(response)["detail"].startswith("Cannot reach the database server at 127.0.0.1:")


@pytest.mark.django_db(transaction=True)
def test_search(api, make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(20, mode="full", template="{title}", payload=["name"])
    response = api.get(f"/api/tasks/{task.pk}/search/?q=anything")
    assert response.status_code == 400
    assert data(response) == {"detail": f"Collection {task.collection!r} does not exist yet: start the task first."}

    runner = run_in_thread(task)
    runner.join(120)  # a full snapshot ends by itself
    assert runner.error is None, runner.error
    assert runner.run_result.status == SyncRun.Status.SUCCEEDED, runner.run_result.error
    wait_converged(task, conn)
    rows = source_rows(conn)
    wanted = rows[max(rows)]
    response = api.get(f"/api/tasks/{task.pk}/search/", {"q": wanted["title"], "limit": 3})
    assert response.status_code == 200
    hits = data(response)
    assert len(hits) == 3
    assert hits[0]["key"] == wanted["id"] and hits[0]["text"] == wanted["title"]
    assert hits[0]["payload"] == {"name": wanted["name"]}
    assert hits[0]["score"] >= hits[1]["score"]

    assert data(api.get(f"/api/tasks/{task.pk}/search/")) == {"q": ["This field is required."]}
    assert data(api.get(f"/api/tasks/{task.pk}/search/?q=")) == {"q": ["This field may not be blank."]}
    assert data(api.get(f"/api/tasks/{task.pk}/search/?q=x&limit=0")) == {
        "limit": ["Ensure this value is greater than or equal to 1."]}


@pytest.mark.django_db
def test_events_after_a_seq(api, offline_task, redis_server, settings):
    from tasks.events import publish

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [settings.REDIS_URL]}}}
    published = [publish(offline_task.pk, {"type": "progress", "done": i}) for i in range(4)]
    seqs = [e["seq"] for e in published]
    assert seqs == sorted(seqs)

    response = api.get(f"/api/tasks/{offline_task.pk}/events/", {"after": seqs[1]})
    assert response.status_code == 200
    assert data(response) == published[2:]
    assert data(api.get(f"/api/tasks/{offline_task.pk}/events/")) == published
    assert data(api.get(f"/api/tasks/{offline_task.pk}/events/", {"after": seqs[-1]})) == []

    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = api.get(f"/api/tasks/{offline_task.pk}/events/")
    assert response.status_code == 503
    assert data(response) == {"detail": "Cannot reach Redis (task events and runner locks live there); try again."}

    assert data(api.get(f"/api/tasks/{offline_task.pk}/events/?after=abc")) == {
        "after": ["A valid integer is required."]}
    assert data(api.get(f"/api/tasks/{offline_task.pk}/events/?after=-1")) == {
        "after": ["Ensure this value is greater than or equal to 0."]}


# -- runs and dead letters -------------------------------------------------------------------------


@pytest.mark.django_db
def test_runs_are_read_only_newest_first_with_filters(api, offline_task, down_source, store):
    other = save_task(name=slug("other"), source=down_source, store=store, table="docs", text_template="{title}")
    statuses = ["succeeded", "failed", "stopped"]
    runs = [SyncRun.objects.create(task=offline_task, status=statuses[i % 3]) for i in range(12)]
    SyncRun.objects.create(task=other, status="running")

    page = data(api.get("/api/runs/?page_size=5"))
    assert page["count"] == 13 and len(page["results"]) == 5
    assert [r["id"] for r in page["results"]] == sorted((r["id"] for r in page["results"]), reverse=True)
    assert page["results"][0]["task"] == other.pk

    only_task = data(api.get(f"/api/runs/?task={offline_task.pk}"))
    assert [r["id"] for r in only_task["results"]] == [r.pk for r in reversed(runs)]
    failed = data(api.get(f"/api/runs/?task={offline_task.pk}&status=failed"))
    assert failed["count"] == 4 and {r["status"] for r in failed["results"]} == {"failed"}
    assert data(api.get("/api/runs/?status=failed&status=running"))["count"] == 5

    response = api.get("/api/runs/?status=bogus")
    assert response.status_code == 400
    assert response.json() == {"status": ["Select a valid choice. bogus is not one of the available choices."]}
    response = api.get("/api/runs/?task=abc")
    assert response.status_code == 400
    assert response.json() == {"task": ["Enter a whole number."]}

    run = data(api.get(f"/api/runs/{runs[0].pk}/"))
    assert run["status"] == "succeeded" and run["rows_read"] == 0 and run["error"] == ""
    assert api.post("/api/runs/", {"task": offline_task.pk}, format="json").status_code == 405
    assert api.delete(f"/api/runs/{runs[0].pk}/").status_code == 405

    tasks = data(api.get(f"/api/tasks/?source={down_source.pk}&name={other.name}"))
    assert [t["name"] for t in tasks["results"]] == [other.name]
    assert api.get("/api/tasks/?mode=never").status_code == 400


@pytest.mark.django_db
def test_dead_letters(api, offline_task):
    run = SyncRun.objects.create(task=offline_task, status="failed")
    for i in range(3):
        DeadLetter.objects.create(task=offline_task, run=run, key=[i], row={"id": i, "title": "x" * 70000},
                                  error="text too long")
    page = data(api.get(f"/api/tasks/{offline_task.pk}/dead-letters/?page_size=2"))
    assert page["count"] == 3 and [d["key"] for d in page["results"]] == [[2], [1]]
    assert page["results"][0]["error"] == "text too long" and page["results"][0]["run"] == run.pk


# -- schema and docs -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_schema_is_valid_openapi_without_warnings(api, tmp_path):
    from openapi_spec_validator import validate

    response = api.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate(schema)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {"/api/sources/", "/api/sources/{id}/test/", "/api/sources/{id}/tables/", "/api/stores/{id}/test/",
            "/api/tasks/", "/api/tasks/{id}/start/", "/api/tasks/{id}/stop/", "/api/tasks/{id}/resnapshot/",
            "/api/tasks/{id}/preview/", "/api/tasks/preview/", "/api/tasks/{id}/search/",
            "/api/tasks/{id}/events/", "/api/tasks/{id}/dead-letters/", "/api/runs/", "/api/auth/token/"} <= paths
    source = schema["components"]["schemas"]["DataSource"]["properties"]
    assert "password" not in source and "password_set" in source

    # drf-spectacular's own validation, failing on any warning.
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"),
                 stdout=out, stderr=out)


@pytest.mark.django_db
def test_docs_page_renders(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content and b"/api/schema/" in response.content



@pytest.mark.django_db
def test_browsable_api_renders(api, offline_task):
    for path in ["/api/", "/api/sources/", f"/api/sources/{offline_task.source_id}/", "/api/stores/", "/api/tasks/",
                 f"/api/tasks/{offline_task.pk}/", "/api/runs/", f"/api/tasks/{offline_task.pk}/dead-letters/"]:
        response = api.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, path
        assert PASSWORD not in response.content.decode() and TOKEN not in response.content.decode(), path
