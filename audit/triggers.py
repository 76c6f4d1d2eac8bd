"""Database triggers that refuse UPDATE and DELETE on audit events, per database vendor."""

from __future__ import annotations

TABLE = "audit_auditevent"
MESSAGE = "audit events are append-only"


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
        ]
    raise NotImplementedError(f"no append-only triggers for database vendor {vendor!r}")


def drop_sql(vendor: str) -> list[str]:
    if vendor == "sqlite":
        return ["DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete"]
    if vendor == "postgresql":
        return [f"DROP TRIGGER IF EXISTS audit_no_change ON {TABLE}",
                f"DROP TRIGGER IF EXISTS audit_no_truncate ON {TABLE}"]
    if vendor == "mysql":
        return ["DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete"]
    return []


def install(connection) -> None:
    with connection.cursor() as cursor:
        for statement in install_sql(connection.vendor):
            cursor.execute(statement)


def drop(connection) -> None:
    with connection.cursor() as cursor:
        for statement in drop_sql(connection.vendor):
            cursor.execute(statement)
