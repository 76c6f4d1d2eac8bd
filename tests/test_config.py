"""Config as code: apply_config / export_config against a real MariaDB (and a Milvus address).

The source's user is a real MariaDB account with a real password, so a task's primary key can only
be read from the catalog if the password went from the environment, through encryption, intact.
"""

from __future__ import annotations

import copy
import secrets
from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.db import connection

from datasources.models import DataSource, VectorStore
from datasources.services import SOURCE_FIELDS, STORE_FIELDS
from rsync_admin import devservers
from rsync_admin.corpus import create_docs_table
from tasks.configfile import SOURCE_SPEC, STORE_SPEC, TASK_SPEC, ConfigError, apply_config, export_config
from tasks.models import Checkpoint, SyncTask
from tasks.services import TASK_FIELDS, TaskNotReady, mark_running, start_task

from .conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(mariadb, milvus_server, source_db, monkeypatch):
    """A docs table, a MariaDB user that can read it with a password only it knows, and the env."""
    database, conn = source_db
    create_docs_table(conn, "docs", 3)
    user = unique("cfg")
    password = f"pw-{secrets.token_hex(8)}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
    token = f"tok-{secrets.token_hex(8)}"
    monkeypatch.setenv("SHOP_DB_PASSWORD", password)
    monkeypatch.setenv("MILVUS_TOKEN", token)
    monkeypatch.delenv("RSYNC_TEST_UNSET_VAR", raising=False)
    yield {"database": database, "conn": conn, "user": user, "password": password, "token": token,
           "port": mariadb.port, "uri": f"http://127.0.0.1:{milvus_server.port}"}
    admin = devservers.mariadb_root(mariadb)
    with admin.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    admin.close()


def config(world) -> dict:
    return {
        "sources": [{
            "name": "shop", "kind": "mysql", "host": "127.0.0.1", "port": world["port"],
            "database": world["database"], "user": world["user"], "password": "${SHOP_DB_PASSWORD}",
        }],
        "stores": [{"name": "local-milvus", "kind": "milvus", "uri": world["uri"], "token": "${MILVUS_TOKEN}"}],
        "tasks": [{
            "name": "products", "source": "shop", "store": "local-milvus", "table": "docs",
            "text_template": "{title}\n\n{body}", "payload_columns": ["name", "stars"],
            "embedding_model": "all-MiniLM-L6-v2", "collection": "products", "mode": "full+incremental",
            "batch_size": 256,
        }],
    }


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def raw_secret(table: str, column: str, name: str) -> str:
    """The column as stored, bypassing the model (which would hand back the same envelope anyway)."""
    with connection.cursor() as cur:
        cur.execute(f"SELECT {column} FROM {table} WHERE name = %s", [name])
        return cur.fetchone()[0]


def snapshot() -> dict:
    """Every row the config touches, as stored (envelopes and timestamps included)."""
    return {
        "sources": list(DataSource.objects.values()),
        "stores": list(VectorStore.objects.values()),
        "tasks": list(SyncTask.objects.values()),
        "checkpoints": list(Checkpoint.objects.values()),
    }


def actions(changes) -> dict:
    return {(c.kind, c.name): (c.action, c.fields) for c in changes}


# -- applying ------------------------------------------------------------------------------------


def test_apply_creates_sources_stores_and_tasks_with_secrets_encrypted(world):
    changes = apply_config(dump(config(world)))

    assert actions(changes) == {
        ("source", "shop"): ("created", ()), ("store", "local-milvus"): ("created", ()),
        ("task", "products"): ("created", ()),
    }
    source = DataSource.objects.get(name="shop")
    assert (source.host, source.port, source.database, source.user) == (
        "127.0.0.1", world["port"], world["database"], world["user"])
    stored = raw_secret("datasources_datasource", "password", "shop")
    assert stored.startswith("enc:v1:") and world["password"] not in stored
    assert source.get_password() == world["password"]
    stored_token = raw_secret("datasources_vectorstore", "token", "local-milvus")
    assert stored_token.startswith("enc:v1:") and world["token"] not in stored_token
    assert VectorStore.objects.get(name="local-milvus").get_token() == world["token"]

    task = SyncTask.objects.get(name="products")
    assert (task.source, task.store.name, task.table) == (source, "local-milvus", "docs")
    assert task.text_template == "{title}\n\n{body}" and task.payload_columns == ["name", "stars"]
    assert (task.collection, task.mode, task.batch_size) == ("products", "full+incremental", 256)
    # Read from the catalog by logging in as the user: proves the password arrived intact.
    assert task.primary_key == ["id"]
    assert Checkpoint.objects.filter(task=task).exists()
    assert task.desired_state == SyncTask.DesiredState.STOPPED  # applying never starts anything


def test_defaults_fill_what_the_file_leaves_out(world):
    data = config(world)
    data["sources"][0] = {k: v for k, v in data["sources"][0].items() if k not in ("kind", "port")}
    data["sources"][0]["port"] = world["port"]
    data["stores"][0] = {"name": "local-milvus", "uri": world["uri"]}
    data["tasks"][0] = {"name": "my-products", "source": "shop", "store": "local-milvus", "table": "docs",
                        "text_template": "{title}"}
    apply_config(dump(data))

    task = SyncTask.objects.get(name="my-products")
    assert (task.payload_columns, task.embedding_model, task.mode, task.batch_size) == (
        [], "all-MiniLM-L6-v2", "full+incremental", 256)
    assert task.collection == "my_products"  # derived by save_task, as for the form
    assert DataSource.objects.get(name="shop").kind == "mysql"
    assert raw_secret("datasources_vectorstore", "token", "local-milvus") == ""


def test_reapplying_the_same_file_writes_nothing(world):
    text = dump(config(world))
    apply_config(text)
    before = snapshot()

    changes = apply_config(text)

    assert {c.action for c in changes} == {"unchanged"} and len(changes) == 3
    # Not even updated_at or a fresh ciphertext of the same password.
    assert snapshot() == before


def test_reapplying_updates_only_what_changed(world, monkeypatch):
    apply_config(dump(config(world)))
    new_password = f"pw2-{secrets.token_hex(8)}"
    with world["conn"].cursor() as cur:
        cur.execute(f"ALTER USER '{world['user']}'@'%%' IDENTIFIED BY %s", (new_password,))
    monkeypatch.setenv("SHOP_DB_PASSWORD_V2", new_password)
    data = config(world)
    data["sources"][0]["password"] = "${SHOP_DB_PASSWORD_V2}"
    data["tasks"][0].update(text_template="{title}", batch_size=64)

    changes = apply_config(dump(data))

    assert actions(changes) == {
        ("source", "shop"): ("updated", ("password",)), ("store", "local-milvus"): ("unchanged", ()),
        ("task", "products"): ("updated", ("text_template", "batch_size")),
    }
    assert DataSource.objects.get(name="shop").get_password() == new_password
    task = SyncTask.objects.get(name="products")
    assert (task.text_template, task.batch_size, task.primary_key) == ("{title}", 64, ["id"])
    assert all(not c.note for c in changes)

    # A running task is updated too, with a word that its runner still has the old settings.
    mark_running(task)
    data["tasks"][0]["batch_size"] = 32
    (change,) = [c for c in apply_config(dump(data)) if c.kind == "task"]
    assert (change.action, change.fields) == ("updated", ("batch_size",))
    assert change.note == "the task is running: the change takes effect when it is stopped and started again"


def test_a_left_out_secret_keeps_the_stored_one_and_empty_clears_it(world):
    apply_config(dump(config(world)))
    envelope = raw_secret("datasources_datasource", "password", "shop")
    data = config(world)
    del data["sources"][0]["password"]
    data["stores"][0]["token"] = ""

    changes = apply_config(dump(data))

    assert actions(changes)[("source", "shop")] == ("unchanged", ())
    assert actions(changes)[("store", "local-milvus")] == ("updated", ("token",))
    assert raw_secret("datasources_datasource", "password", "shop") == envelope
    assert VectorStore.objects.get(name="local-milvus").get_token() == ""


def test_a_task_may_name_a_source_and_store_that_are_only_in_the_database(world):
    apply_config(dump(config(world)))
    data = config(world)
    data["tasks"][0]["name"] = "more-products"
    only_tasks = {"tasks": data["tasks"]}

    changes = apply_config(dump(only_tasks))

    assert actions(changes) == {("task", "more-products"): ("created", ())}
    assert SyncTask.objects.get(name="more-products").source.name == "shop"


def test_dry_run_reports_and_changes_nothing(world):
    changes = apply_config(dump(config(world)), dry_run=True)

    assert [c.action for c in changes] == ["created"] * 3
    assert snapshot() == {"sources": [], "stores": [], "tasks": [], "checkpoints": []}


# -- exporting -----------------------------------------------------------------------------------


def test_export_round_trips(world, monkeypatch):
    apply_config(dump(config(world)))

    exported = export_config()

    assert world["password"] not in exported and world["token"] not in exported
    assert "enc:v1:" not in exported
    expected = config(world)
    expected["sources"][0]["password"] = "${RSYNC_SOURCE_SHOP_PASSWORD}"
    expected["stores"][0]["token"] = "${RSYNC_STORE_LOCAL_MILVUS_TOKEN}"
    # Every task setting is exported, the ones the file left out with their defaults.
    expected["tasks"][0] = {
        "capture": "log", "updated_at_column": "", "soft_delete_column": "", "poll_interval": 5.0,
        "overlap_seconds": 5.0, "chunk_size": 0, "chunk_overlap": 32, "vectorizer": "", "index_type": "AUTOINDEX",
        "metric": "COSINE", "hnsw_m": 16, "hnsw_ef_construction": 100, "ivf_nlist": 128, "row_filter": [],
        **expected["tasks"][0],
    }
    assert yaml.safe_load(exported) == expected
    assert "#   RSYNC_SOURCE_SHOP_PASSWORD\n#   RSYNC_STORE_LOCAL_MILVUS_TOKEN\n" in exported
    assert 'text_template: "{title}\\n\\n{body}"' in exported  # one readable line, as written by hand
    assert "payload_columns: [name, stars]" in exported

    # Without the variables the export refers to, applying it stops before changing anything.
    before = snapshot()
    with pytest.raises(ConfigError) as err:
        apply_config(exported)
    assert "sources[0].password refers to ${RSYNC_SOURCE_SHOP_PASSWORD}, which is not set" in str(err.value)
    assert snapshot() == before

    monkeypatch.setenv("RSYNC_SOURCE_SHOP_PASSWORD", world["password"])
    monkeypatch.setenv("RSYNC_STORE_LOCAL_MILVUS_TOKEN", world["token"])
    assert {c.action for c in apply_config(exported)} == {"unchanged"}
    assert snapshot() == before
    assert export_config() == exported

    # Restoring into an empty database gives the same objects back.
    SyncTask.objects.all().delete()
    DataSource.objects.all().delete()
    VectorStore.objects.all().delete()
    assert {c.action for c in apply_config(exported)} == {"created"}
    assert export_config() == exported
    assert SyncTask.objects.get(name="products").primary_key == ["id"]


def test_export_leaves_out_empty_secrets_so_applying_it_needs_no_variables(world):
    data = config(world)
    data["sources"][0].update(user="root", password="")  # the test server's root has no password
    del data["stores"][0]["token"]
    apply_config(dump(data))

    exported = export_config()

    assert "password" not in exported and "token:" not in exported and "Set these" not in exported
    assert {c.action for c in apply_config(exported, environ={})} == {"unchanged"}


def test_export_keeps_apart_names_that_share_a_variable(world, monkeypatch):
    data = config(world)
    data["sources"].append({**data["sources"][0], "name": "shop_db"})
    data["sources"].append({**data["sources"][0], "name": "shop-db"})
    apply_config(dump(data))

    refs = [s.get("password") for s in yaml.safe_load(export_config())["sources"]]

    assert refs == ["${RSYNC_SOURCE_SHOP_PASSWORD}", "${RSYNC_SOURCE_SHOP_DB_PASSWORD}",
                    "${RSYNC_SOURCE_SHOP_DB_2_PASSWORD}"]


def test_export_of_nothing_is_a_valid_empty_config():
    exported = export_config()
    assert yaml.safe_load(exported) == {"sources": [], "stores": [], "tasks": []}
    assert apply_config(exported) == []


# -- errors: each names the bad item, and nothing changes ----------------------------------------


def _set(section: str, key: str, value):
    def mutate(data):
        data[section][0][key] = value
    return mutate


def _drop(section: str, key: str):
    def mutate(data):
        del data[section][0][key]
    return mutate


def _duplicate_source(data):
    data["sources"].append(copy.deepcopy(data["sources"][0]))


def _top_level(data):
    data["task"] = []


ERROR_CASES = [
    ("literal secret", _set("sources", "password", "hunter2-literal"),
     "sources[0].password must be a ${ENV_VAR} reference, not a literal"),
    ("literal token", _set("stores", "token", "tok-literal"),
     "stores[0].token must be a ${ENV_VAR} reference, not a literal"),
    ("reference inside a literal", _set("sources", "password", "x${SHOP_DB_PASSWORD}"),
     "sources[0].password must be a ${ENV_VAR} reference, not a literal"),
    ("empty secret", _set("sources", "password", None), "sources[0].password is empty"),
    ("unset variable", _set("sources", "password", "${RSYNC_TEST_UNSET_VAR}"),
     "sources[0].password refers to ${RSYNC_TEST_UNSET_VAR}, which is not set in the environment"),
    ("unknown key", _set("sources", "passwd", "${SHOP_DB_PASSWORD}"),
     "sources[0].passwd is not a known key (did you mean 'password'?)"),
    ("unknown task key", _set("tasks", "schedule", "hourly"), "tasks[0].schedule is not a known key (expected one of"),
    ("unknown top-level key", _top_level, "task is not a known key (did you mean 'tasks'?)"),
    ("unknown source", _set("tasks", "source", "nope"),
     "tasks[0].source names 'nope', which is neither under sources in this file nor in the database"),
    ("unknown store", _set("tasks", "store", "nope"),
     "tasks[0].store names 'nope', which is neither under stores in this file nor in the database"),
    ("quoted port", _set("sources", "port", "3306"),
     "sources[0].port must be an integer, not a string (leave out the quotes)"),
    ("boolean user", _set("sources", "user", True),
     "sources[0].user must be a string, not a boolean (put it in quotes)"),
    ("boolean batch size", _set("tasks", "batch_size", True), "tasks[0].batch_size must be an integer, not a boolean"),
    ("payload not a list", _set("tasks", "payload_columns", "title"),
     "tasks[0].payload_columns must be a list of strings, not a string"),
    ("payload item", _set("tasks", "payload_columns", ["title", 3]),
     "tasks[0].payload_columns[1] must be a string, not an integer"),
    ("invalid mode", _set("tasks", "mode", "fast"),
     "tasks[0].mode must be one of full, incremental, full+incremental, not 'fast'"),
    ("invalid model", _set("tasks", "embedding_model", "gpt-9"), "tasks[0].embedding_model must be one of"),
    ("invalid kind", _set("sources", "kind", "postgres"),
     "sources[0].kind must be one of mysql, postgresql, sqlite, not 'postgres'"),
    ("zero batch size", _set("tasks", "batch_size", 0),
     "tasks[0].batch_size is invalid: Ensure this value is greater than or equal to 1."),
    ("port out of range", _set("sources", "port", 70000), "sources[0].port must be a port between 1 and 65535"),
    ("bad template", _set("tasks", "text_template", "{title"),
     "tasks[0].text_template is invalid: Not a valid template: expected '}' before end of string."),
    # The rules of tasks.validation, as the API and the console form apply them (the catalog
    # ones are in test_catalog_problems_are_errors: here the source's password is wrong).
    ("reserved payload column", _set("tasks", "payload_columns", ["_key"]),
     "tasks[0].payload_columns is invalid: '_key' clashes with a field Milvus keeps for itself"),
    ("index the store lacks", _set("tasks", "index_type", "DISKANN"),
     "tasks[0].index_type must be one of AUTOINDEX, HNSW, IVF_FLAT, not 'DISKANN'"),
    ("HNSW M out of range", _set("tasks", "hnsw_m", 1),
     "tasks[0].hnsw_m is invalid: Ensure this value is greater than or equal to 2."),
    ("polling without its column", _set("tasks", "capture", "poll"),
     "tasks[0].updated_at_column is invalid: Polling needs the column that changes on every write"),
    ("bad name", _set("sources", "name", "my shop"), "sources[0].name must be a slug"),
    ("missing table", _drop("tasks", "table"), "tasks[0].table is required"),
    ("missing uri", _drop("stores", "uri"), "stores[0].uri is required"),
    ("duplicate name", _duplicate_source, "sources[1].name 'shop' is declared twice (first at sources[0])"),
    # Found only by the model's full_clean, after the source and store were saved: rolled back too.
    ("model validation", _set("tasks", "collection", "c" * 300),
     "tasks[0].collection is invalid: Ensure this value has at most 255 characters (it has 300)."),
]


@pytest.mark.parametrize(("mutate", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_bad_item_and_change_nothing(world, monkeypatch, mutate, message):
    apply_config(dump(config(world)))
    before = snapshot()
    # Valid changes alongside the error: none of them may survive it.
    monkeypatch.setenv("SHOP_DB_PASSWORD_V2", "rotated")
    data = config(world)
    data["sources"][0]["password"] = "${SHOP_DB_PASSWORD_V2}"
    data["stores"].append({"name": "other-milvus", "uri": world["uri"]})
    data["tasks"][0]["batch_size"] = 512
    mutate(data)

    with pytest.raises(ConfigError) as err:
        apply_config(dump(data))

    assert message in str(err.value), str(err.value)
    assert "hunter2-literal" not in str(err.value) and "tok-literal" not in str(err.value)
    assert snapshot() == before


def test_catalog_problems_are_errors(world):
    data = config(world)
    data["tasks"][0]["table"] = "no_such_table"
    with pytest.raises(ConfigError) as err:
        apply_config(dump(data))
    [error] = err.value.errors
    assert error == (f"tasks[0].table is invalid: Table 'no_such_table' does not exist in database "
                     f"{world['database']!r} (or the user cannot see it). (line 18)")
    data = config(world)
    data["tasks"][0].update(text_template="{title} {nope}", payload_columns=["name", "gone"])
    with pytest.raises(ConfigError) as err:
        apply_config(dump(data))
    columns = "(it has: body, id, kind, module, name, stars, title, updated_at)"
    assert err.value.errors == [
        f"tasks[0].text_template is invalid: The text template names column 'nope' that 'docs' does not have "
        f"{columns}. (line 19)",
        f"tasks[0].payload_columns is invalid: Payload column 'gone' does not exist in 'docs' {columns}. (line 20)",
    ]
    assert not SyncTask.objects.exists()


def test_a_task_whose_source_is_down_is_saved_with_a_note(world):
    # The policy of save_task everywhere: saved with a warning, and start refuses until the
    # source answers and the table and columns check out.
    data = config(world)
    data["sources"][0]["port"] = devservers.free_port()
    changes = apply_config(dump(data))
    note = next(c.note for c in changes if c.kind == "task")
    assert note.startswith("Table 'docs' and its columns were not checked: Cannot reach the database server at "
                           f"127.0.0.1:{data['sources'][0]['port']}")
    assert "check_source --task products" in note
    with pytest.raises(TaskNotReady, match="Cannot reach the database server"):
        start_task(SyncTask.objects.get(name="products"), enqueue=False)
    # Applying again while it is still down says so again, though nothing changed.
    [task_change] = [c for c in apply_config(dump(data)) if c.kind == "task"]
    assert task_change.action == "unchanged" and "were not checked" in task_change.note
    assert all(not c.note for c in apply_config(dump(config(world))))


def test_a_table_without_primary_key_is_saved_with_a_note(world):
    with world["conn"].cursor() as cur:
        cur.execute("CREATE TABLE notes (body TEXT, author VARCHAR(50))")
    data = config(world)
    data["tasks"][0].update(table="notes", text_template="{body}", payload_columns=["author"])
    [change] = [c for c in apply_config(dump(data)) if c.kind == "task"]
    assert change.action == "created" and SyncTask.objects.get(name="products").primary_key == []
    assert change.note.startswith("Table 'notes' has no primary key: the task is saved, but it will not start")


def test_index_settings_apply_and_a_bad_combination_names_the_task(world):
    data = config(world)
    data["tasks"][0].update(index_type="HNSW", metric="IP", hnsw_m=8, hnsw_ef_construction=64)
    apply_config(dump(data))
    task = SyncTask.objects.get(name="products")
    assert (task.index_type, task.metric, task.hnsw_m, task.hnsw_ef_construction) == ("HNSW", "IP", 8, 64)
    exported = yaml.safe_load(export_config())["tasks"][0]
    assert {k: exported[k] for k in ("index_type", "metric", "hnsw_m", "hnsw_ef_construction", "ivf_nlist")} == {
        "index_type": "HNSW", "metric": "IP", "hnsw_m": 8, "hnsw_ef_construction": 64, "ivf_nlist": 128}

    data["stores"][0] = {"name": "local-qdrant", "kind": "qdrant", "uri": "/tmp/nowhere-qdrant"}
    data["tasks"][0].update(store="local-qdrant", index_type="IVF_FLAT")
    before = snapshot()
    with pytest.raises(ConfigError) as err:
        apply_config(dump(data))
    [error] = err.value.errors
    assert error.startswith("tasks[0].index_type is invalid: Qdrant has no IVF_FLAT index: choose AUTOINDEX or HNSW.")
    assert snapshot() == before


BAD_FILE = """\
sources:
  - name: shop
    host: 127.0.0.1
    database: shop
    user: rsync
    password: hunter2
tasks:
  - name: products
    source: shop
    store: nowhere
    table: products
    text_template: "{title}"
    mode: fast
"""


def test_every_problem_is_reported_at_once_with_its_line():
    with pytest.raises(ConfigError) as err:
        apply_config(BAD_FILE)

    assert err.value.errors == [
        "sources[0].password must be a ${ENV_VAR} reference, not a literal (line 6)",
        "tasks[0].mode must be one of full, incremental, full+incremental, not 'fast' (line 13)",
        "tasks[0].store names 'nowhere', which is neither under stores in this file nor in the database (line 10)",
    ]
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("sources:\n  - name: shop\n   host: x\n", "malformed YAML at line 3, column 4"),
    ("sources:\n  - name: [shop\n", "malformed YAML at line 3"),
    ("sources:\n  - name: a\n    name: b\n", "sources[0].name is given twice (line 3)"),
    ("- name: shop\n", "the file must be a mapping with sources, stores, tasks, not a list"),
    ("sources: shop\n", "sources must be a list, not a string (line 1)"),
    ("sources:\n  - shop\n", "sources[0] must be a mapping, not a string (line 2)"),
    ("tasks:\n  - name: t\n    source: s\n    store: s\n    table: t\n", "tasks[0].text_template is required (line 2)"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "the file expands to more than 100000 values"),
    ("a: &a [*a]\n", "a recursive alias"),
    ("sources: []\n---\ntasks: []\n", "malformed YAML at line 2, column 1: but found another document"),
], ids=["indentation", "unclosed", "duplicate key", "not a mapping", "section", "item", "missing key line",
        "alias bomb", "recursive alias", "two documents"])
def test_malformed_files(text, message):
    with pytest.raises(ConfigError) as err:
        apply_config(text)
    assert message in str(err.value), str(err.value)


def test_an_empty_file_changes_nothing():
    assert apply_config("") == []
    assert apply_config("sources:\ntasks:\n") == []


def test_the_schema_covers_exactly_what_the_services_accept():
    assert set(SOURCE_SPEC) == {"name", "password", *SOURCE_FIELDS}
    assert set(STORE_SPEC) == {"name", "token", *STORE_FIELDS}
    assert set(TASK_SPEC) == {"name", "source", "store", *TASK_FIELDS}


# -- the commands --------------------------------------------------------------------------------


def test_commands(world, tmp_path):
    path = tmp_path / "rsync.yaml"
    path.write_text(dump(config(world)))

    out = StringIO()
    call_command("apply_config", str(path), "--dry-run", stdout=out)
    assert "[dry run] source shop: created\n" in out.getvalue()
    assert "Dry run: 3 created, 0 updated, 0 unchanged; nothing was changed." in out.getvalue()
    assert not DataSource.objects.exists()

    out = StringIO()
    call_command("apply_config", str(path), stdout=out)
    assert out.getvalue().splitlines() == [
        "source shop: created", "store local-milvus: created", "task products: created",
        "Applied: 3 created, 0 updated, 0 unchanged.",
    ]

    out = StringIO()
    call_command("export_config", stdout=out)
    assert out.getvalue() == export_config()

    path.write_text(BAD_FILE)
    with pytest.raises(CommandError) as err:
        call_command("apply_config", str(path))
    assert str(err.value).startswith(f"{path}: 3 problems, nothing was changed:\n  sources[0].password must be")

    with pytest.raises(CommandError, match="Cannot read"):
        call_command("apply_config", str(tmp_path / "missing.yaml"))



