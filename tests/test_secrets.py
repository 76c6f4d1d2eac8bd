"""Secrets at rest: encrypted in the database, rotated under a new key, never printed."""

import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from datasources.crypto import SecretDecryptionError
from datasources.models import DataSource
from datasources.services import check_source, save_source
from rsync_admin.devservers import mariadb_root

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


def test_logs_never_show_the_plaintext(caplog, mariadb, secret_user, make_task):
    caplog.set_level(logging.DEBUG)
    source = make_source(mariadb, secret_user)
    check_source(source)
    source_obj = DataSource.objects.get(pk=source.pk)
    assert PASSWORD not in repr(source_obj.get_password())
    assert PASSWORD not in caplog.text
