"""The browser console: pages, forms, test connection, catalog pickers, preview, start/stop and the
search playground, through Django's test client against the real private servers."""

from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.urls import reverse

from accounts.roles import ADMIN, OPERATOR, VIEWER, sync_role_groups
from accounts.services import create_user, grant
from datasources.models import DataSource, EmbeddingModel, VectorStore
from datasources.services import save_source, save_store
from rsync_admin import devservers
from rsync_admin.corpus import create_docs_table
from tasks.models import SyncRun, SyncTask
from tasks.runner import TaskRunner
from tasks.services import mark_running

from .conftest import unique
from .helpers import expected_text, source_rows

PASSWORD = "Sup3r-secret-pw-do-not-show"
TOKEN = "root:Milvus-token-do-not-show"

servers = pytest.mark.django_db(transaction=True)


@pytest.fixture
def user(db):
    """An Admin: model-wide rights on sources, stores and tasks."""
    sync_role_groups()  # transactional tests empty the role groups the migration made
    return create_user(username="operator", password="operator-pw-123", roles=[ADMIN])


@pytest.fixture
def client_in(client, user):
    cache.clear()  # the last store checks are kept in the cache, by store id
    client.force_login(user)
    return client


def slug(prefix: str) -> str:
    return unique(prefix).replace("_", "-")


def html(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def secret_source(port: int = 3306, database: str = "nowhere") -> DataSource:
    return save_source(name=slug("src"), host="127.0.0.1", port=port, database=database, user="root",
                       password=PASSWORD)


def secret_store(uri: str = "http://127.0.0.1:9") -> VectorStore:
    return save_store(name=slug("store"), uri=uri, token=TOKEN)


# -- login ------------------------------------------------------------------------------------

ANONYMOUS_GETS = [
    ("console:dashboard", ()), ("console:task-list", ()), ("console:task-create", ()), ("console:task-catalog", ()),
    ("console:task-detail", (1,)), ("console:task-edit", (1,)), ("console:task-runs", (1,)),
    ("console:task-header", (1,)), ("console:task-search", (1,)), ("console:source-list", ()),
    ("console:source-create", ()), ("console:source-edit", (1,)), ("console:source-delete", (1,)),
    ("console:store-list", ()), ("console:store-create", ()), ("console:store-edit", (1,)),
    ("console:store-delete", (1,)), ("console:task-delete", (1,)),
]
ANONYMOUS_POSTS = [
    ("console:task-start", (1,)), ("console:task-stop", (1,)), ("console:task-resnapshot", (1,)),
    ("console:task-preview", ()), ("console:source-test", (1,)), ("console:store-test", (1,)),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "args"), ANONYMOUS_GETS + ANONYMOUS_POSTS)
def test_anonymous_users_are_sent_to_login(client, name, args):
    url = reverse(name, args=args)
    response = client.post(url) if (name, args) in ANONYMOUS_POSTS else client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


@pytest.mark.django_db
def test_login_page_and_logging_in(client, user):
    response = client.get("/login/")
    assert response.status_code == 200
    assert 'id="login-form"' in html(response) and 'name="username"' in html(response)
    response = client.post("/login/", {"username": "operator", "password": "wrong"})
    assert response.status_code == 200 and "error" in html(response)
    response = client.post("/login/", {"username": "operator", "password": "operator-pw-123"})
    assert response.status_code == 302 and response["Location"] == reverse("console:dashboard")


@pytest.mark.django_db
def test_navigation_and_logout(client_in, user):
    page = html(client_in.get(reverse("console:dashboard")))
    for label in ("Dashboard", "Sources", "Stores", "Tasks", "API docs", "operator", "Log out"):
        assert label in page
    assert 'href="/api/docs/"' in page
    assert 'id="nav-admin"' in page  # the Admin role carries staff status
    assert re.search(r'<form method="post" action="/logout/"', page)
    user.is_staff = False
    user.save()
    assert 'id="nav-admin"' not in html(client_in.get(reverse("console:dashboard")))  # staff only
    response = client_in.post("/logout/")
    assert response.status_code == 302
    assert client_in.get(reverse("console:dashboard")).status_code == 302


# -- data sources and vector stores -----------------------------------------------------------


@pytest.mark.django_db
def test_create_and_edit_a_source_keeps_the_password_write_only(client_in):
    response = client_in.post(reverse("console:source-create"), {
        "name": "orders-db", "kind": "mysql", "host": "db.internal", "port": "3306",
        "database": "shop", "user": "reader", "password": PASSWORD,
    })
    assert response.status_code == 302, html(response)
    source = DataSource.objects.get(name="orders-db")
    assert source.get_password() == PASSWORD and source.host == "db.internal"

    page = html(client_in.get(reverse("console:source-edit", args=[source.pk])))
    assert PASSWORD not in page and source.password not in page  # neither plaintext nor the envelope
    assert "A password is set" in page and 'type="password"' in page

    # An empty input keeps the password; the other fields change.
    response = client_in.post(reverse("console:source-edit", args=[source.pk]), {
        "kind": "mysql", "host": "db2.internal", "port": "3307", "database": "shop", "user": "reader", "password": "",
    })
    assert response.status_code == 302
    source.refresh_from_db()
    assert (source.host, source.port, source.get_password()) == ("db2.internal", 3307, PASSWORD)

    # A typed value replaces it; "remove" clears it.
    client_in.post(reverse("console:source-edit", args=[source.pk]), {
        "kind": "mysql", "host": "db2.internal", "port": "3307", "database": "shop", "user": "reader",
        "password": "another-one",
    })
    source.refresh_from_db()
    assert source.get_password() == "another-one"
    client_in.post(reverse("console:source-edit", args=[source.pk]), {
        "kind": "mysql", "host": "db2.internal", "port": "3307", "database": "shop", "user": "reader",
        "password": "", "clear_password": "on",
    })
    source.refresh_from_db()
    assert source.get_password() == ""


@pytest.mark.django_db
def test_source_form_shows_errors_per_field(client_in):
    secret_source(database="taken")
    existing = DataSource.objects.get()
    response = client_in.post(reverse("console:source-create"), {
        "name": existing.name, "kind": "mysql", "host": "", "port": "not-a-port", "database": "shop", "user": "",
        "password": PASSWORD,
    })
    assert response.status_code == 200
    page = html(response)
    for field in ("name", "host", "port", "user"):
        assert f'id="error-{field}"' in page, field
    assert "already exists" in page
    assert PASSWORD not in page  # a rejected form does not echo the secret either
    assert DataSource.objects.count() == 1


@pytest.mark.django_db
def test_create_and_edit_a_store_keeps_the_token_write_only(client_in):
    response = client_in.post(reverse("console:store-create"), {
        "name": "vectors", "kind": "milvus", "uri": "http://milvus:19530", "token": TOKEN,
    })
    assert response.status_code == 302, html(response)
    store = VectorStore.objects.get(name="vectors")
    assert store.get_token() == TOKEN
    page = html(client_in.get(reverse("console:store-edit", args=[store.pk])))
    assert TOKEN not in page and "A token is set" in page
    client_in.post(reverse("console:store-edit", args=[store.pk]), {"kind": "milvus", "uri": "http://m2:19530"})
    store.refresh_from_db()
    assert store.uri == "http://m2:19530" and store.get_token() == TOKEN


@pytest.mark.django_db
def test_secrets_never_appear_in_any_page(client_in):
    source, store = secret_source(), secret_store()
    pages = [
        reverse("console:dashboard"), reverse("console:source-list"), reverse("console:store-list"),
        reverse("console:source-edit", args=[source.pk]), reverse("console:store-edit", args=[store.pk]),
        reverse("console:source-delete", args=[source.pk]), reverse("console:task-create"),
    ]
    for url in pages:
        response = client_in.get(url)
        assert response.status_code == 200, url
        page = html(response)
        assert PASSWORD not in page and TOKEN not in page, url
        assert source.password not in page and store.token not in page, url  # the encrypted envelopes
    assert "a password is set" in html(client_in.get(reverse("console:source-list")))
    assert "a token is set" in html(client_in.get(reverse("console:store-list")))


@pytest.mark.django_db
def test_delete_source_and_store(client_in):
    source, store = secret_source(), secret_store()
    page = html(client_in.get(reverse("console:source-delete", args=[source.pk])))
    assert 'id="confirm-delete"' in page
    assert client_in.post(reverse("console:source-delete", args=[source.pk])).status_code == 302
    assert client_in.post(reverse("console:store-delete", args=[store.pk])).status_code == 302
    assert not DataSource.objects.exists() and not VectorStore.objects.exists()


@servers
def test_a_source_used_by_a_task_is_not_deleted(client_in, make_task):
    task = make_task(0)
    page = html(client_in.get(reverse("console:source-delete", args=[task.source.pk])))
    assert 'id="delete-blocked"' in page and task.name in page
    response = client_in.post(reverse("console:source-delete", args=[task.source.pk]), follow=True)
    assert any("is used by task" in m and task.name in m for m in messages_of(response))
    assert DataSource.objects.filter(pk=task.source.pk).exists()


@servers
def test_test_connection_shows_each_check(client_in, mariadb, source_db):
    database, _ = source_db
    good = save_source(name=slug("good"), host="127.0.0.1", port=mariadb.port, database=database, user="root",
                       password="")
    response = client_in.post(reverse("console:source-test", args=[good.pk]), HTTP_HX_REQUEST="true")
    page = html(response)
    assert response.status_code == 200
    assert 'data-check="connect"' in page and "Connected to MariaDB" in page
    assert 'data-check="binlog_format"' in page and "FAIL" not in page
    good.refresh_from_db()
    assert good.last_check_ok is True
    listing = html(client_in.get(reverse("console:source-list")))
    assert "not tested" not in listing


@servers
def test_test_connection_names_a_wrong_password(client_in, mariadb, source_db):
    database, _ = source_db
    source = save_source(name=slug("badpw"), host="127.0.0.1", port=mariadb.port, database=database, user="root",
                         password="not-the-password")
    page = html(client_in.post(reverse("console:source-test", args=[source.pk]), HTTP_HX_REQUEST="true"))
    assert "FAIL" in page and 'data-check="connect"' in page
    assert "wrong user name or password" in page
    assert "not-the-password" not in page
    source.refresh_from_db()
    assert source.last_check_ok is False
    dashboard = html(client_in.get(reverse("console:dashboard")))
    assert "wrong user name or password" in dashboard  # the last result is shown with the source


@pytest.mark.django_db
def test_test_connection_names_an_unreachable_server(client_in):
    source = save_source(name=slug("down"), host="127.0.0.1", port=devservers.free_port(), database="x", user="u")
    page = html(client_in.post(reverse("console:source-test", args=[source.pk]), HTTP_HX_REQUEST="true"))
    assert "FAIL" in page and "connection refused: nothing listens on that port" in page


@pytest.mark.django_db
def test_store_test_connection_names_an_unreachable_server(client_in):
    store = save_store(name=slug("gone"), uri=f"http://127.0.0.1:{devservers.free_port()}")
    page = html(client_in.post(reverse("console:store-test", args=[store.pk]), HTTP_HX_REQUEST="true"))
    assert "FAIL" in page and "Cannot reach Milvus" in page and "is the server running?" in page
    listing = html(client_in.get(reverse("console:store-list")))
    assert "badge-fail" in listing and "Cannot reach Milvus" in listing  # the last result is remembered


@servers
def test_store_test_connection(client_in, milvus_server):
    good = save_store(name=slug("milvus"), uri=f"http://127.0.0.1:{milvus_server.port}")
    page = html(client_in.post(reverse("console:store-test", args=[good.pk]), HTTP_HX_REQUEST="true"))
    assert "Connected to Milvus" in page and "FAIL" not in page
    listing = html(client_in.get(reverse("console:store-list")))
    assert "not tested" not in listing and "badge-ok" in listing


# -- task form --------------------------------------------------------------------------------


@pytest.fixture
def docs_source(mariadb, milvus_server, source_db):
    database, conn = source_db
    create_docs_table(conn, "docs", 20)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (id INT PRIMARY KEY, note TEXT)")
    source = save_source(name=slug("src"), host="127.0.0.1", port=mariadb.port, database=database, user="root",
                         password="")
    store = save_store(name=slug("store"), uri=f"http://127.0.0.1:{milvus_server.port}")
    return source, store, conn


def task_post(source, store, **overrides) -> dict:
    data = {
        "name": slug("task"), "source": source.pk, "store": store.pk, "table": "docs",
        "text_template": "{title}\n\n{body}", "payload_columns": ["name", "stars"],
        "embedding_model": "all-MiniLM-L6-v2", "collection": "", "mode": "full", "batch_size": "64",
    }
    data.update(overrides)
    return data


@servers
def test_catalog_pickers_load_live_from_the_source(client_in, docs_source):
    source, _, _ = docs_source
    page = html(client_in.get(reverse("console:task-catalog"), {"source": source.pk}, HTTP_HX_REQUEST="true"))
    assert 'id="id_table"' in page and '<option value="docs">' in page and '<option value="notes">' in page
    page = html(client_in.get(reverse("console:task-catalog"), {"source": source.pk, "table": "docs"}))
    for column in ("id", "name", "module", "title", "body", "stars"):
        assert f'name="payload_columns" value="{column}"' in page, column
    assert 'data-insert="{title}"' in page and "Primary key: id" in page


@servers
def test_create_a_task_through_the_form(client_in, docs_source):
    source, store, _ = docs_source
    data = task_post(source, store)
    response = client_in.post(reverse("console:task-create"), data)
    assert response.status_code == 302, html(response)
    task = SyncTask.objects.get(name=data["name"])
    assert response["Location"] == reverse("console:task-detail", args=[task.pk])
    assert (task.table, task.payload_columns, task.mode, task.batch_size) == ("docs", ["name", "stars"], "full", 64)
    assert task.primary_key == ["id"] and task.collection == data["name"].replace("-", "_")

    # Editing: the saved values are shown, checked and kept.
    page = html(client_in.get(reverse("console:task-edit", args=[task.pk])))
    assert re.search(r'value="stars"[^>]*checked', page)
    response = client_in.post(reverse("console:task-edit", args=[task.pk]),
                              task_post(source, store, name="ignored", batch_size="32", payload_columns=["name"]))
    assert response.status_code == 302, html(response)
    task.refresh_from_db()
    assert task.batch_size == 32 and task.payload_columns == ["name"] and task.name == data["name"]


def field_errors(page: str, field: str) -> list[str]:
    """The error messages shown under one field of a form page."""
    from html import unescape

    return [unescape(m) for m in re.findall(rf'<p class="error" id="error-{field}(?:-\d+)?">(.*?)</p>', page)]


DOCS_COLUMNS = "body, id, kind, module, name, stars, title, updated_at"


@servers
def test_the_form_chooses_the_vectorizer_chunking_and_vector_index(client_in, docs_source, qdrant_folder):
    source, store, _ = docs_source
    structured = EmbeddingModel.objects.create(name="by-stars", kind="structured", columns=["stars", "id"])
    page = html(client_in.get(reverse("console:task-create")))
    # The bundled model is the default: no vectorizer picked.
    assert re.search(r'<select name="vectorizer"[^>]*>\s*<option value="" selected>None: the bundled model', page)
    assert f'<option value="{structured.pk}">by-stars</option>' in page
    for name in ("chunk_size", "chunk_overlap", "index_type", "metric", "hnsw_m", "hnsw_ef_construction",
                 "ivf_nlist"):
        assert f'name="{name}"' in page, name

    data = task_post(source, store, vectorizer=structured.pk, chunk_size="128", chunk_overlap="16",
                     index_type="HNSW", metric="L2", hnsw_m="8", hnsw_ef_construction="64")
    response = client_in.post(reverse("console:task-create"), data)
    assert response.status_code == 302, html(response)
    task = SyncTask.objects.get(name=data["name"])
    assert (task.vectorizer, task.chunk_size, task.chunk_overlap) == (structured, 128, 16)
    assert (task.index_type, task.metric, task.hnsw_m, task.hnsw_ef_construction) == ("HNSW", "L2", 8, 64)
    page = html(client_in.get(reverse("console:task-edit", args=[task.pk])))
    assert f'<option value="{structured.pk}" selected>by-stars</option>' in page
    assert '<option value="HNSW" selected>' in page and '<option value="L2" selected>' in page

    # The same rules as the API: a structured vectorizer reads real columns, Qdrant has no IVF_FLAT.
    missing = EmbeddingModel.objects.create(name="by-rank", kind="structured", columns=["rank"])
    qdrant = save_store(name=slug("qdrant"), kind="qdrant", uri=str(qdrant_folder))
    response = client_in.post(reverse("console:task-create"), task_post(
        source, qdrant, vectorizer=missing.pk, index_type="IVF_FLAT", chunk_size="16", chunk_overlap="16"))
    page = html(response)
    assert field_errors(page, "index_type") == ["Qdrant has no IVF_FLAT index: choose AUTOINDEX or HNSW."]
    assert field_errors(page, "vectorizer") == [
        f"The structured vectorizer 'by-rank' reads column 'rank' that 'docs' does not have (it has: {DOCS_COLUMNS})."]
    assert field_errors(page, "chunk_overlap") == ["The overlap must be smaller than the chunk size (16 tokens)."]
    assert re.search(r'<details id="index-settings"\s+open>', page)  # the error is not hidden in a closed panel
    assert SyncTask.objects.count() == 1


@servers
def test_task_form_validates_against_the_catalog(client_in, docs_source):
    """The rules and words of tasks.validation, as the API and config files give them."""
    source, store, _ = docs_source
    data = task_post(source, store, text_template="{title} {nope}", payload_columns=["name", "missing"],
                     table="absent", batch_size="0")
    response = client_in.post(reverse("console:task-create"), data)
    assert response.status_code == 200
    page = html(response)
    assert field_errors(page, "table") == [
        f"Table 'absent' does not exist in database {source.database!r} (or the user cannot see it)."]
    assert field_errors(page, "batch_size") == ["Ensure this value is greater than or equal to 1."]
    response = client_in.post(reverse("console:task-create"), task_post(
        source, store, text_template="{title} {nope}", payload_columns=["name", "missing", "_key"]))
    page = html(response)
    assert field_errors(page, "text_template") == [
        f"The text template names column 'nope' that 'docs' does not have (it has: {DOCS_COLUMNS})."]
    assert field_errors(page, "payload_columns") == [
        "'_key' clashes with a field Milvus keeps for itself (_chunk, _key, _row_key, _text, _text_hash, _vector).",
        f"Payload column 'missing' does not exist in 'docs' (it has: {DOCS_COLUMNS}).",
    ]
    response = client_in.post(reverse("console:task-create"), task_post(source, store, text_template="{title"))
    assert field_errors(html(response), "text_template") == [
        "Not a valid template: expected '}' before end of string. Put column names in braces, e.g. {title}; "
        "write {{ for a brace."]
    response = client_in.post(reverse("console:task-create"), task_post(source, store, capture="poll"))
    assert field_errors(html(response), "updated_at_column") == [
        "Polling needs the column that changes on every write (e.g. updated_at)."]
    assert not SyncTask.objects.exists()


@pytest.mark.django_db
def test_task_form_with_a_source_that_is_down_saves_with_a_warning(client_in):
    """The same policy as the API and config files: saved with a warning, start refuses."""
    port = devservers.free_port()
    source = save_source(name=slug("down"), host="127.0.0.1", port=port, database="x", user="u")
    store = save_store(name=slug("store"), uri="http://127.0.0.1:9")
    page = html(client_in.get(reverse("console:task-catalog"), {"source": source.pk}))
    assert 'id="catalog-error"' in page and "connection refused" in page
    # The pickers cannot list anything: the table and payload columns are typed instead.
    page = html(client_in.get(reverse("console:task-create"), {"source": source.pk}))
    assert '<input type="text" name="table"' in page and '<input type="text" name="payload_columns"' in page
    response = client_in.post(reverse("console:task-preview"), task_post(source, store), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "connection refused" in html(response)
    assert not SyncTask.objects.exists()

    response = client_in.post(reverse("console:task-create"), task_post(source, store, payload_columns="name, stars"),
                              follow=True)
    task = SyncTask.objects.get()
    assert response.redirect_chain == [(reverse("console:task-detail", args=[task.pk]), 302)]
    assert (task.table, task.payload_columns, task.primary_key) == ("docs", ["name", "stars"], [])
    assert f"Task {task.name} saved." in messages_of(response)
    assert (f"Table 'docs' and its columns were not checked: Cannot reach the database server at 127.0.0.1:{port} "
            "(connection refused: nothing listens on that port). The task is saved; it will not start until the "
            "source answers and the check passes.") in messages_of(response)

    # Editing while it is still down shows what was saved in the typed inputs.
    page = html(client_in.get(reverse("console:task-edit", args=[task.pk])))
    assert 'name="table" value="docs"' in page and 'name="payload_columns" value="name, stars"' in page

    response = client_in.post(reverse("console:task-start", args=[task.pk]), follow=True)
    refused = f"Cannot start {task.name}: Cannot reach the database server"
    assert any(m.startswith(refused) for m in messages_of(response))
    assert not task.runs.exists()


@servers
def test_preview_renders_five_real_rows_before_saving(client_in, docs_source):
    source, store, conn = docs_source
    data = task_post(source, store, text_template="{title}\n\n{body}")
    response = client_in.post(reverse("console:task-preview"), data, HTTP_HX_REQUEST="true")
    page = html(response)
    assert response.status_code == 200
    assert page.count('class="preview-row"') == 5
    rows = source_rows(conn)
    from django.utils.html import escape

    for key in range(1, 6):
        assert f'data-key="{key}"' in page
        assert escape(expected_text(rows[key])) in page
    assert "<dt>stars</dt>" in page
    assert not SyncTask.objects.exists()  # nothing saved

    page = html(client_in.post(reverse("console:task-preview"), task_post(source, store, text_template="{nope}")))
    assert 'id="preview-errors"' in page
    assert "The text template names column &#x27;nope&#x27; that &#x27;docs&#x27; does not have" in page


# -- task page --------------------------------------------------------------------------------


@servers
def test_pages_render_for_a_logged_in_user(client_in, make_task):
    task = make_task(0)
    urls = [
        reverse("console:dashboard"), reverse("console:task-list"), reverse("console:task-create"),
        reverse("console:task-detail", args=[task.pk]), reverse("console:task-edit", args=[task.pk]),
        reverse("console:task-runs", args=[task.pk]), reverse("console:task-header", args=[task.pk]),
        reverse("console:task-search", args=[task.pk]), reverse("console:source-list"),
        reverse("console:store-list"), reverse("console:source-create"), reverse("console:store-create"),
        reverse("console:source-edit", args=[task.source.pk]), reverse("console:store-edit", args=[task.store.pk]),
        reverse("console:store-delete", args=[task.store.pk]), reverse("console:task-delete", args=[task.pk]),
    ]
    for url in urls:
        response = client_in.get(url)
        assert response.status_code == 200, url
    response = client_in.get(reverse("console:dashboard"), {"part": "tasks"}, HTTP_HX_REQUEST="true")
    assert f'id="task-row-{task.pk}"' in html(response) and "<html" not in html(response)

    page = html(client_in.get(reverse("console:task-detail", args=[task.pk])))
    stable_ids = [
        "live-panel", "live-connection", "progress-status", "progress-phase", "progress-done", "progress-total",
        "progress-bar", "progress-rate", "progress-eta", "progress-lag", "progress-messages", "live-chart",
        "search-input", "search-results", "run-history", "task-start", "task-stop", "task-resnapshot",
        *[f"counter-{name}" for name in SyncRun.COUNTERS],
    ]
    for element_id in stable_ids:
        assert f'id="{element_id}"' in page, element_id
    assert ">Start</button>" in page and ">Stop</button>" in page and ">Re-snapshot</button>" in page
    assert f'data-events-url="/api/tasks/{task.pk}/events/"' in page and f'data-ws-path="/ws/tasks/{task.pk}/"' in page
    assert "console/task_live.js" in page and "console/htmx.min.js" in page


@servers
def test_start_of_a_task_on_a_table_without_primary_key_shows_the_message(client_in, make_task, source_db):
    _, conn = source_db
    task = make_task(5)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE docs DROP PRIMARY KEY")
    response = client_in.post(reverse("console:task-start", args=[task.pk]), follow=True)
    assert response.status_code == 200
    text = " ".join(messages_of(response))
    assert "Table 'docs' has no primary key: rows could not be matched to vectors; add one." in text
    assert "has no primary key" in html(response)
    task.refresh_from_db()
    assert task.desired_state == SyncTask.DesiredState.STOPPED and not task.runs.exists()


@servers
def test_stop_and_resnapshot(client_in, make_task):
    task = make_task(0)
    mark_running(task)
    response = client_in.post(reverse("console:task-stop", args=[task.pk]), follow=True)
    assert any("Asked" in m for m in messages_of(response))
    task.refresh_from_db()
    assert task.desired_state == SyncTask.DesiredState.STOPPED
    response = client_in.post(reverse("console:task-resnapshot", args=[task.pk]), follow=True)
    assert any("whole table again" in m for m in messages_of(response))
    assert client_in.get(reverse("console:task-stop", args=[task.pk])).status_code == 405


@servers
def test_delete_a_task(client_in, make_task):
    task = make_task(0)
    mark_running(task)
    response = client_in.post(reverse("console:task-delete", args=[task.pk]), follow=True)
    assert any("stop it first" in m for m in messages_of(response))
    assert SyncTask.objects.filter(pk=task.pk).exists()
    client_in.post(reverse("console:task-stop", args=[task.pk]))
    response = client_in.post(reverse("console:task-delete", args=[task.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("console:task-list")
    assert not SyncTask.objects.filter(pk=task.pk).exists()


@servers
def test_after_a_sync_the_pages_show_counters_and_search_finds_rows(client_in, make_task, source_db):
    _, conn = source_db
    task = make_task(60, mode="full", batch_size=32)
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.SUCCEEDED, run.error

    page = html(client_in.get(reverse("console:task-detail", args=[task.pk])))
    assert f'id="run-{run.pk}"' in page and 'data-status="succeeded"' in page
    assert re.search(r'id="counter-rows_upserted">60<', page)
    assert re.search(r'id="progress-done">60<', page)
    assert 'data-last-seq="0"' not in page  # the kept events were read

    dashboard = html(client_in.get(reverse("console:dashboard")))
    row = dashboard[dashboard.index(f'id="task-row-{task.pk}"'):]
    assert re.search(r'data-label="Rows synced" class="num">60<', row)

    query = expected_text(source_rows(conn)[7])  # the very text row 7 was embedded with
    response = client_in.get(reverse("console:task-search", args=[task.pk]), {"q": query}, HTTP_HX_REQUEST="true")
    results = html(response)
    assert response.status_code == 200 and 'id="search-hits"' in results
    first = re.search(r'class="hit" data-key="([^"]+)"', results)
    assert first and first.group(1) == "7", results[:2000]
    assert 'class="score"' in results and "<dt>module</dt>" in results

    empty = html(client_in.get(reverse("console:task-search", args=[task.pk]), {"q": "  "}))
    assert 'id="search-hint"' in empty


@servers
def test_search_before_the_first_sync_says_so(client_in, make_task):
    task = make_task(0)
    page = html(client_in.get(reverse("console:task-search", args=[task.pk]), {"q": "anything"}))
    assert 'id="search-error"' in page and "does not exist yet" in page


# -- permissions --------------------------------------------------------------------------------


@servers
def test_pages_follow_object_permissions(client, make_task):
    """A viewer sees the task but gets no buttons and a 403 on start; someone without a grant gets 404."""
    sync_role_groups()
    task = make_task(0)
    viewer = create_user(username="viewer", password="pw-viewer-123", roles=[VIEWER])
    outsider = create_user(username="outsider", password="pw-outsider-123", roles=[OPERATOR])
    grant(task, to=viewer, level="view")

    client.force_login(viewer)
    page = html(client.get(reverse("console:task-detail", args=[task.pk])))
    assert 'id="live-panel"' in page and 'id="task-view-only"' in page
    assert 'id="task-start"' not in page and 'id="task-edit"' not in page and 'id="task-delete"' not in page
    assert client.post(reverse("console:task-start", args=[task.pk])).status_code == 403
    assert client.get(reverse("console:task-edit", args=[task.pk])).status_code == 403
    assert client.get(reverse("console:task-search", args=[task.pk]), {"q": ""}).status_code == 200
    assert f'id="task-row-{task.pk}"' in html(client.get(reverse("console:dashboard")))
    assert client.get(reverse("console:source-create")).status_code == 403

    client.force_login(outsider)
    assert client.get(reverse("console:task-detail", args=[task.pk])).status_code == 404
    assert client.post(reverse("console:task-stop", args=[task.pk])).status_code == 404
    assert f'id="task-row-{task.pk}"' not in html(client.get(reverse("console:dashboard")))
    assert task.source.name not in html(client.get(reverse("console:source-list")))
    # An operator may create a source, and then manage it (the creator's grant).
    response = client.post(reverse("console:source-create"), {
        "name": "mine", "kind": "mysql", "host": "db", "port": "3306", "database": "d", "user": "u",
    })
    assert response.status_code == 302, html(response)
    mine = DataSource.objects.get(name="mine")
    listing = html(client.get(reverse("console:source-list")))
    assert f'id="source-edit-{mine.pk}"' in listing and f'id="source-delete-{mine.pk}"' in listing
    assert client.get(reverse("console:source-edit", args=[mine.pk])).status_code == 200
