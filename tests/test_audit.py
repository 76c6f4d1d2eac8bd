"""The audit log: one event per action with actor and address, append-only, tamper-evident."""

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.context import AuditContext, activate, deactivate
from audit.models import AppendOnlyError, AuditEvent
from datasources.services import save_source
from tasks.services import resnapshot_task, stop_task

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="correct-horse-battery")


@pytest.fixture
def as_alice(alice):
    token = activate(AuditContext(actor=alice, ip_address="203.0.113.7", user_agent="pytest", request_id="req-1"))
    yield alice
    deactivate(token)


def test_source_changes_are_recorded_with_actor_address_and_redacted_secrets(as_alice, mariadb):
    source = save_source(name="shop", host="127.0.0.1", port=mariadb.port, database="shop", user="root",
                         password="first-s3cret")
    save_source(name="shop", password="second-s3cret")
    save_source(name="shop", host="127.0.0.1")  # no change: no event
    events = list(AuditEvent.objects.order_by("id"))
    assert [e.action for e in events] == ["create", "update"]
    for event in events:
        assert (event.actor_id, event.actor_name, event.ip_address) == (as_alice.pk, "alice", "203.0.113.7")
        assert event.object_type == "datasources.datasource" and event.object_id == str(source.pk)
        assert event.user_agent == "pytest" and event.request_id == "req-1"
    assert events[1].diff == {"password": "changed"}
    everything = "".join(e.canonical() for e in events)
    assert "s3cret" not in everything and "enc:v1" not in everything


def test_task_actions_are_recorded(as_alice, make_task):
    task = make_task(1)
    stop_task(task)
    resnapshot_task(task)
    events = AuditEvent.objects.filter(object_type="tasks.synctask").order_by("id")
    actions = list(events.values_list("action", flat=True))
    assert actions == ["create", "stop", "resnapshot"]


def test_sign_in_events_record_the_address(client, alice):
    assert not client.login(username="alice", password="wrong")
    client.post("/login/", {"username": "alice", "password": "correct-horse-battery"}, REMOTE_ADDR="198.51.100.4")
    client.post("/logout/", REMOTE_ADDR="198.51.100.4")
    events = list(AuditEvent.objects.order_by("id"))
    assert [e.action for e in events] == ["login_failed", "login", "logout"]
    assert events[0].object_label == "alice" and events[0].actor_id is None
    assert events[1].ip_address == "198.51.100.4" and events[1].actor_name == "alice"


def test_the_orm_and_the_database_refuse_changes(as_alice, audit_triggers_on):
    save_source(name="shop", host="h", port=3306, database="d", user="u", password="p")
    event = AuditEvent.objects.get()
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update(action="x")
    for sql in (f"UPDATE audit_auditevent SET action = 'x' WHERE id = {event.pk}",
                f"DELETE FROM audit_auditevent WHERE id = {event.pk}"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql)
    assert AuditEvent.objects.get().action == "create"


def make_events(count: int) -> list[int]:
    for i in range(count):
        save_source(name=f"s{i}", host="h", port=3306, database="d", user="u", password="p")
    return list(AuditEvent.objects.order_by("id").values_list("id", flat=True))


def test_verify_audit_passes_an_intact_chain(as_alice, capsys):
    make_events(3)
    call_command("verify_audit")
    assert "intact" in capsys.readouterr().out


def test_verify_audit_names_an_altered_row(as_alice):
    ids = make_events(4)
    with connection.cursor() as cur:  # the triggers are off: someone with database access tampers
        cur.execute("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [ids[2]])
    with pytest.raises(CommandError, match=f"broken at event {ids[2]}"):
        call_command("verify_audit")


def test_verify_audit_names_the_row_after_a_deleted_one(as_alice):
    ids = make_events(4)
    with connection.cursor() as cur:
        cur.execute("DELETE FROM audit_auditevent WHERE id = %s", [ids[1]])
    with pytest.raises(CommandError, match=f"broken at event {ids[2]}"):
        call_command("verify_audit")


def test_verify_audit_notices_deleted_newest_rows(as_alice):
    ids = make_events(3)
    with connection.cursor() as cur:
        cur.execute("DELETE FROM audit_auditevent WHERE id = %s", [ids[-1]])
    with pytest.raises(CommandError, match="broken"):
        call_command("verify_audit")
