"""Database triggers that refuse UPDATE and DELETE on audit events, per database vendor.

What each vendor refuses:

- SQLite: UPDATE and DELETE (SQLite has no TRUNCATE).
- PostgreSQL: UPDATE, DELETE and TRUNCATE.
- MySQL/MariaDB: UPDATE and DELETE. Their TRUNCATE fires no trigger; it is refused instead
  because an (empty) guard table holds a foreign key to the audit table, and InnoDB will not
  truncate a table another table refers to. `SET FOREIGN_KEY_CHECKS = 0` lifts that refusal, so
  the real defence is an application user without the DROP privilege, which TRUNCATE needs
  (README, Security).

Whoever may drop a trigger may tamper anyway; the hash chain (`verify_audit`) shows it then.
"""

from __future__ import annotations

from django.core.management.base import CommandError

TABLE = "audit_auditevent"
MYSQL_GUARD_TABLE = "audit_truncate_guard"
MESSAGE = "audit events are append-only"

# MySQL/MariaDB error 1419: with binary logging on, only SUPER may create triggers (unless the
# server trusts routine creators).
MYSQL_NEEDS_SUPER = 1419


class TriggerInstallError(CommandError):
    """The database refused to create the append-only triggers; the message says what to do.

    A CommandError, so `manage.py migrate` ends with this message alone instead of a traceback."""


def install_sql(vendor: str) -> list[str]:
    if vendor == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
            f"CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
        ]
    if vendor == "postgresql":
        return [
            "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{MESSAGE}'; END; $$ LANGUAGE plpgsql",
            f"DROP TRIGGER IF EXISTS audit_no_change ON {TABLE}",
            f"CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
            f"DROP TRIGGER IF EXISTS audit_no_truncate ON {TABLE}",
            f"CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {TABLE} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
        ]
    if vendor == "mysql":
        return [
            "DROP TRIGGER IF EXISTS audit_no_update",
            f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON {TABLE} FOR EACH ROW "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'",
            "DROP TRIGGER IF EXISTS audit_no_delete",
            f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON {TABLE} FOR EACH ROW "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'",
            # Never holds a row: its foreign key alone makes InnoDB refuse TRUNCATE of the audit table.
            f"CREATE TABLE IF NOT EXISTS {MYSQL_GUARD_TABLE} (event_id BIGINT NULL, "
            f"CONSTRAINT {MYSQL_GUARD_TABLE}_fk FOREIGN KEY (event_id) REFERENCES {TABLE} (id)) ENGINE=InnoDB",
        ]
    raise NotImplementedError(f"no append-only triggers for database vendor {vendor!r}")


def drop_sql(vendor: str) -> list[str]:
    if vendor == "sqlite":
        return ["DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete"]
    if vendor == "postgresql":
        return [f"DROP TRIGGER IF EXISTS audit_no_change ON {TABLE}",
                f"DROP TRIGGER IF EXISTS audit_no_truncate ON {TABLE}"]
    if vendor == "mysql":
        return ["DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete",
                f"DROP TABLE IF EXISTS {MYSQL_GUARD_TABLE}"]
    return []


MYSQL_SUPER_HELP = (
    "Cannot create the audit log's append-only triggers: this MySQL/MariaDB server has binary logging "
    "on, and then only a user with the SUPER privilege may create triggers. Either run "
    "`manage.py migrate` once as a user with SUPER (the triggers stay; the application's own user "
    "does not need SUPER), or let the server trust trigger creators: "
    "`SET GLOBAL log_bin_trust_function_creators = 1` (and log_bin_trust_function_creators=1 in the "
    "server's configuration). Then run `manage.py migrate` again; it carries on where it stopped. "
    "See README.md, Security."
)


def install(connection) -> None:
    from django.db import OperationalError

    with connection.cursor() as cursor:
        for statement in install_sql(connection.vendor):
            try:
                cursor.execute(statement)
            except OperationalError as exc:
                if connection.vendor == "mysql" and exc.args and exc.args[0] == MYSQL_NEEDS_SUPER:
                    raise TriggerInstallError(f"{MYSQL_SUPER_HELP}\n(The server said: {exc.args[1]})") from exc
                raise


def drop(connection) -> None:
    with connection.cursor() as cursor:
        for statement in drop_sql(connection.vendor):
            cursor.execute(statement)
