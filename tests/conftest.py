"""Real servers for the tests: a private MariaDB with binlog, Redis and a Milvus Lite server,
each started once per test session on free ports in temporary folders; Qdrant runs in local mode
in a folder per test."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings

from rsync_admin import devservers
from rsync_admin.corpus import create_docs_table

from .helpers import RunnerThread

_counter = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def audit_triggers_off(django_db_setup, django_db_blocker):
    """Transactional tests empty every table between tests, which the audit log's append-only
    triggers rightly refuse; the audit tests put the triggers back (`audit_triggers_on`)."""
    from django.db import connection

    from audit import triggers

    with django_db_blocker.unblock():
        triggers.drop(connection)


@pytest.fixture
def audit_triggers_on(django_db_blocker):
    from django.db import connection

    from audit import triggers

    with django_db_blocker.unblock():
        triggers.install(connection)
    yield
    with django_db_blocker.unblock():
        triggers.drop(connection)


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def mariadb(servers_dir):
    server = devservers.start_mariadb(servers_dir / "mariadb")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def misconfigured_mariadb(servers_dir):
    """A second private MariaDB set up wrong for change capture: no binary log, statement
    logging, minimal row images and no row metadata (each must fail its own check)."""
    server = devservers.start_mariadb(
        servers_dir / "mariadb-misconfigured", cdc=False,
        args=("--binlog-format=STATEMENT", "--binlog-row-image=MINIMAL", "--binlog-row-metadata=NO_LOG"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(servers_dir):
    server = devservers.start_redis(servers_dir / "redis")
    settings.REDIS_URL = f"redis://127.0.0.1:{server.port}/0"
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [settings.REDIS_URL]}}
    }
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_server(servers_dir):
    server = devservers.start_milvus(servers_dir / "milvus")
    yield server
    server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster set up for logical replication.

    Its folder is under /tmp, not in the pytest folder: as root the server runs as the `postgres`
    user, which cannot enter root's private pytest folder."""
    directory = Path(tempfile.mkdtemp(prefix="rsync-test-pg-"))
    server = devservers.start_postgres(directory)
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def source_kind() -> str:
    """The kind of source `source_db` and `make_task` use. Run a test against several with
    `@pytest.mark.parametrize("source_kind", ["mysql", "postgresql"])`."""
    return "mysql"


def source_settings(request, kind: str) -> dict:
    """How `save_source` reaches the test server of `kind` (started on first use)."""
    if kind == "postgresql":
        server = request.getfixturevalue("postgres")
        return {"kind": kind, "host": "127.0.0.1", "port": server.port, "user": server.extra["user"],
                "password": server.extra["password"]}
    return {"kind": kind, "host": "127.0.0.1", "port": request.getfixturevalue("mariadb").port, "user": "root",
            "password": ""}


@pytest.fixture
def source_db(request, source_kind):
    """A fresh database on the private MariaDB (or PostgreSQL) and an autocommit admin connection to it."""
    name = unique("src")
    if source_kind == "postgresql":
        yield from _postgres_db(request.getfixturevalue("postgres"), name)
        return
    mariadb = request.getfixturevalue("mariadb")
    admin = devservers.mariadb_root(mariadb)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.close()
    conn = devservers.mariadb_root(mariadb, name)
    yield name, conn
    conn.close()


def _postgres_db(server, name: str):
    admin = devservers.postgres_admin(server)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn = devservers.postgres_admin(server, name)
    yield name, conn
    conn.close()
    # Slots are per cluster and limited (max_replication_slots): drop the ones tasks left behind.
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = %s", (name,))
        for _ in range(50):
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s AND active", (name,))
            if not cur.fetchone()[0]:
                break
            time.sleep(0.1)
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", (name,))
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def store_kind() -> str:
    """The kind of vector store `make_task` builds. Run a test against several with
    `@pytest.mark.parametrize("store_kind", ["milvus", "qdrant"])`: the parameter overrides this
    fixture, for `make_task` too (test ids name it: [milvus], [mysql-qdrant], ...)."""
    return "milvus"


@pytest.fixture
def capture() -> str:
    """How `make_task`'s tasks see changes: "log" (binlog, WAL) or "poll" (timestamp polling by
    `updated_at`, deletes through a `deleted_at` soft-delete column, which `make_task` adds).
    Parametrize like `store_kind`; the shared convergence pairs are `helpers.PAIRS`."""
    return "log"


# Polling settings for the shared tests. The overlap must outlast the longest transaction
# between its first stamped row and its commit on a loaded machine: rows stamped earlier than
# the position minus the overlap are never read.
POLLING = {"capture": "poll", "updated_at_column": "updated_at", "soft_delete_column": "deleted_at",
           "poll_interval": 0.2, "overlap_seconds": 15.0}


@pytest.fixture
def qdrant_folder(tmp_path_factory) -> Path:
    """An empty folder for a Qdrant local-mode store (qdrant-client creates its files)."""
    return tmp_path_factory.mktemp("qdrant") / "store"


@pytest.fixture
def make_task(request, redis_server, source_db, store_kind, source_kind, capture):
    """Build source, store and task through the services, on a docs table of `rows` rows."""
    from datasources.services import save_source, save_store
    from tasks.services import save_task

    database, conn = source_db

    def store_uri(kind: str) -> str:
        # Resolved on demand, so Qdrant-only tests never wait for the Milvus server to start.
        if kind == "milvus":
            return f"http://127.0.0.1:{request.getfixturevalue('milvus_server').port}"
        if kind == "qdrant":
            return str(request.getfixturevalue("qdrant_folder"))
        raise ValueError(f"no test store of kind {kind!r}")

    def build(rows: int = 0, *, mode: str = "full+incremental", batch_size: int = 128, payload=None,
              template: str = "{title}\n\n{body}", table: str = "docs", create_table: bool = True,
              store_kind: str = store_kind, **fields):
        if create_table:
            create_docs_table(conn, table, rows)
        if capture == "poll":
            if source_kind != "mysql":  # the PostgreSQL docs table has no ON UPDATE for updated_at
                raise ValueError("the polling tests use the MySQL docs table")
            with conn.cursor() as cur:
                cur.execute(f"ALTER TABLE `{table}` ADD COLUMN deleted_at DATETIME(6) NULL")
            fields = {**POLLING, **fields}
        source = save_source(name=unique("source").replace("_", "-"), database=database,
                             **source_settings(request, source_kind))
        store = save_store(name=unique("store").replace("_", "-"), kind=store_kind, uri=store_uri(store_kind))
        return save_task(
            name=unique("task").replace("_", "-"), source=source, store=store, table=table,
            text_template=template, payload_columns=payload if payload is not None else ["name", "module", "stars"],
            collection=unique("col"), mode=mode, batch_size=batch_size, **fields,
        )

    return build


@pytest.fixture
def run_in_thread():
    """Run a task's runner in a background thread; stopped (and joined) at the end of the test."""
    started: list[RunnerThread] = []

    def start(task) -> RunnerThread:
        runner = RunnerThread(task)
        runner.start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


@pytest.fixture
def subprocess_env(redis_server, django_db_setup):
    """Environment for `manage.py` subprocesses that share the test database and servers."""
    from django.db import connection

    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("RSYNC_TEST_DATABASE", None)
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable

