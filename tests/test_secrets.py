"""Secrets at rest: encrypted in the database, rotated under a new key, never printed."""

import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from datasources.crypto import SecretDecryptionError
from datasources.models import DataSource
from datasources.services import check_source, save_source, save_store
from rsync_admin.corpus import create_docs_table
from rsync_admin.devservers import free_port, mariadb_root

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "Tr0ub4dor&3-plaintext"


@pytest.fixture
def secret_user(mariadb, source_db):
    """A MariaDB account with a real password and the rights a sync needs."""
    database, _ = source_db
    admin = mariadb_root(mariadb)
    with admin.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'rotated'@'%'")
        cur.execute("CREATE USER 'rotated'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        cur.execute(f"GRANT SELECT ON `{database}`.* TO 'rotated'@'%'")
        cur.execute("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'rotated'@'%'")
    admin.close()
    return database


def make_source(mariadb, database) -> DataSource:
    return save_source(name="secret-source", host="127.0.0.1", port=mariadb.port, database=database,
                       user="rotated", password=PASSWORD)


def connects(source: DataSource) -> bool:
    results = check_source(DataSource.objects.get(pk=source.pk))
    return next(r for r in results if r.name == "connect").ok


def test_the_database_file_never_holds_the_plaintext(mariadb, secret_user):
    source = make_source(mariadb, secret_user)
    with connection.cursor() as cur:
        cur.execute("PRAGMA wal_checkpoint(FULL)")
        cur.execute("SELECT password FROM datasources_datasource WHERE id = %s", [source.pk])
        stored = cur.fetchone()[0]
    assert stored.startswith("enc:v1:test:")
    db_file = Path(connection.settings_dict["NAME"])
    for path in [db_file, db_file.with_name(db_file.name + "-wal")]:
        if path.exists():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert connects(source)


def test_rotation_moves_every_secret_to_the_new_key(settings, mariadb, secret_user, capsys):
    source = make_source(mariadb, secret_user)
    old = settings.RSYNC_ENCRYPTION_KEYS[0]
    new = f"k2026={Fernet.generate_key().decode()}"
    settings.RSYNC_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_encryption_keys")
    assert "re-encrypted" in capsys.readouterr().out
    stored = DataSource.objects.values_list("password", flat=True).get(pk=source.pk)
    assert stored.startswith("enc:v1:k2026:")
    assert connects(source)
    settings.RSYNC_ENCRYPTION_KEYS = [new]  # the old key is gone: everything still works
    assert connects(source)


def test_a_missing_key_fails_closed_naming_it(settings, mariadb, secret_user):
    source = make_source(mariadb, secret_user)
    settings.RSYNC_ENCRYPTION_KEYS = [f"other={Fernet.generate_key().decode()}"]
    with pytest.raises(SecretDecryptionError, match="'test' is not configured"):
        DataSource.objects.get(pk=source.pk).get_password()


@pytest.fixture
def all_logs(caplog):
    """Every record of every logger at every level into caplog: the project's, Django's (SQL with its
    parameters too) and the libraries' (pymysql, urllib3, httpx, ...), whatever LOGGING says."""
    names = {"", "django.db.backends", "pymysql", "pymysqlreplication", "urllib3", "httpx", "httpcore",
             "redis", "celery", "qdrant_client", "pymilvus", "grpc", "sentence_transformers",
             *logging.root.manager.loggerDict}
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.disabled, logger.propagate))
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if not logger.propagate:  # caplog's handler sits on the root logger
            logger.addHandler(caplog.handler)
    connection.force_debug_cursor = True  # Django logs each query with its parameters
    yield caplog
    connection.force_debug_cursor = False
    for logger, level, disabled, propagate in saved:
        logger.setLevel(level)
        logger.disabled = disabled
        if not propagate:
            logger.removeHandler(caplog.handler)


WRONG_PASSWORD = "Wr0ng-guess-plaintext&7"


def test_logs_never_show_the_plaintext(all_logs, capfd, mariadb, secret_user, source_db, redis_server,
                                       qdrant_folder):
    """Saving, connecting and every way of failing: wrong password, unreachable host, a failing
    check, `manage.py check_source`, and a run that fails because the password changed on the server."""
    from tasks.models import SyncRun
    from tasks.runner import TaskRunner
    from tasks.services import save_task

    source = make_source(mariadb, secret_user)
    assert connects(source)

    wrong = save_source(name="wrong-password", host="127.0.0.1", port=mariadb.port, database=secret_user,
                        user="rotated", password=WRONG_PASSWORD)
    connect = check_source(wrong)[0]
    assert not connect.ok and "wrong user name or password" in connect.message
    with pytest.raises(CommandError, match="1 check"):
        call_command("check_source", "wrong-password")

    down = save_source(name="unreachable", host="127.0.0.1", port=free_port(), database=secret_user,
                       user="rotated", password=PASSWORD)
    assert not check_source(down)[0].ok

    failed = [r for r in check_source(source, table="no_such_table") if not r.ok]
    assert failed and "no_such_table" in failed[0].message

    _, conn = source_db
    create_docs_table(conn, "docs", 3)
    store = save_store(name="local-qdrant", kind="qdrant", uri=str(qdrant_folder))
    task = save_task(name="secret-task", source=source, store=store, table="docs", text_template="{title}")
    admin = mariadb_root(mariadb)
    with admin.cursor() as cur:  # someone changes the password on the server: the stored one is stale
        cur.execute("ALTER USER 'rotated'@'%' IDENTIFIED BY 'changed-elsewhere-1'")
    admin.close()
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.FAILED and "wrong user name or password" in run.error

    out, err = capfd.readouterr()
    assert any(r.name == "django.db.backends" for r in all_logs.records), "DEBUG records are captured"
    everything = "\n".join([all_logs.text, *(r.getMessage() for r in all_logs.records), out, err, run.error])
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in everything
    assert PASSWORD not in repr(DataSource.objects.get(pk=source.pk).get_password())
