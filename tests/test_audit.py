"""The audit log: one event per action with actor and address, append-only, tamper-evident."""

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts.roles import ADMIN, OPERATOR, sync_role_groups
from audit import triggers
from audit.context import AuditContext, activate, deactivate
from audit.models import AppendOnlyError, AuditEvent
from datasources.crypto import SecretDecryptionError
from datasources.models import DataSource, VectorStore
from datasources.services import save_source, save_store
from rsync_admin import devservers
from tasks.models import SyncTask
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
    # alice has no model-wide rights, so creating the source granted her "manage" on it
    assert [e.action for e in events] == ["create", "grant", "update"]
    for event in events:
        assert (event.actor_id, event.actor_name, event.ip_address) == (as_alice.pk, "alice", "203.0.113.7")
        assert event.object_type == "datasources.datasource" and event.object_id == str(source.pk)
        assert event.user_agent == "pytest" and event.request_id == "req-1"
    assert events[1].diff == {"to": "user alice", "level": "manage", "reason": "creator"}
    assert events[2].diff == {"password": "changed"}
    everything = "".join(e.canonical() for e in events)
    assert "s3cret" not in everything and "enc:v1" not in everything


def test_task_actions_are_recorded(as_alice, make_task):
    task = make_task(1)
    stop_task(task)
    resnapshot_task(task)
    events = AuditEvent.objects.filter(object_type="tasks.synctask").order_by("id")
    actions = list(events.values_list("action", flat=True))
    assert actions == ["create", "grant", "stop", "resnapshot"]


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
    event = AuditEvent.objects.get(action="create")
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
    assert AuditEvent.objects.get(pk=event.pk).action == "create"


def make_events(count: int) -> list[int]:
    for i in range(count):
        save_source(name=f"s{i}", host="h", port=3306, database="d", user="u", password="p")
    return list(AuditEvent.objects.order_by("id").values_list("id", flat=True))


def test_verify_audit_passes_an_intact_chain(as_alice, capsys):
    make_events(3)
    call_command("verify_audit")
    assert "intact" in capsys.readouterr().out


def tamper(sql: str, params: list) -> None:
    """What someone with database access does: the trigger refuses, so they drop it, then change the row."""
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql, params)
    triggers.drop(connection)
    with connection.cursor() as cur:
        cur.execute(sql, params)


def test_verify_audit_names_an_altered_row(as_alice, audit_triggers_on):
    ids = make_events(4)
    tamper("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [ids[2]])
    with pytest.raises(CommandError, match=f"broken at event {ids[2]}"):
        call_command("verify_audit")


def test_verify_audit_names_the_row_after_a_deleted_one(as_alice, audit_triggers_on):
    ids = make_events(4)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [ids[1]])
    with pytest.raises(CommandError, match=f"broken at event {ids[2]}"):
        call_command("verify_audit")


def test_verify_audit_notices_deleted_newest_rows(as_alice, audit_triggers_on):
    ids = make_events(3)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [ids[-1]])
    with pytest.raises(CommandError, match="broken"):
        call_command("verify_audit")


# -- sign-in refused by the throttle ---------------------------------------------------------------


def test_a_throttled_sign_in_is_recorded(client, alice, redis_server, settings):
    """The throttle turns the attempt away before any password is checked, so Django's
    user_login_failed never fires: the form records it."""
    settings.RSYNC_LOGIN_MAX_FAILURES = 2
    ip = "198.51.100.23"
    for _ in range(2):
        response = client.post("/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR=ip)
        assert "Too many failed sign-ins" not in response.content.decode()
    response = client.post("/login/", {"username": "alice", "password": "correct-horse-battery"}, REMOTE_ADDR=ip)
    assert "Too many failed sign-ins" in response.content.decode()
    events = list(AuditEvent.objects.order_by("id"))
    assert [(e.action, e.diff) for e in events] == [
        ("login_failed", {}), ("login_failed", {}), ("login_failed", {"reason": "throttled"}),
    ]
    assert all(e.ip_address == ip and e.actor_id is None and e.object_label == "alice" for e in events)
    assert events[-1].object_id == str(alice.pk)
    call_command("verify_audit")


def test_a_throttled_api_token_request_is_recorded(client, alice, redis_server, settings):
    from accounts import throttle

    settings.RSYNC_LOGIN_MAX_FAILURES = 1
    ip = "198.51.100.24"
    throttle.record_success("alice", ip)  # other tests' failed sign-ins as alice are in the same Redis
    assert client.post("/api/auth/token/", {"username": "alice", "password": "wrong"},
                       REMOTE_ADDR=ip).status_code == 400
    response = client.post("/api/auth/token/", {"username": "alice", "password": "correct-horse-battery"},
                           REMOTE_ADDR=ip)
    assert response.status_code == 429
    events = list(AuditEvent.objects.order_by("id"))
    assert [(e.action, e.diff, e.ip_address) for e in events] == [
        ("login_failed", {}, ip), ("login_failed", {"reason": "throttled"}, ip),
    ]


# -- addresses as the column stores them -----------------------------------------------------------


@pytest.mark.parametrize(("forwarded", "recorded"), [
    ("2001:DB8:0:0::1", "2001:db8::1"),  # IPv6 written the long way round: stored compressed
    ("::FFFF:0102:0304", "::ffff:1.2.3.4"),
    ("198.51.100.66, 203.0.113.9", "203.0.113.9"),  # the client wrote the first; our proxy added the last
    ("bogus:value", None),  # not an address: unknown, and the sign-in still works
    ("unknown", None),
])
def test_forwarded_addresses_are_recorded_as_stored_and_verify(client, alice, settings, forwarded, recorded):
    settings.RSYNC_TRUST_X_FORWARDED_FOR = True
    response = client.post("/login/", {"username": "alice", "password": "correct-horse-battery"},
                           REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="login")
    assert event.ip_address == recorded
    call_command("verify_audit")  # the hash covers the address as read back


# -- every change made through the console or the API: one event, right actor and address ----------

IP = "192.0.2.44"


@pytest.fixture
def store_kind() -> str:
    """No store is reached by these tests: a Qdrant folder needs no server."""
    return "qdrant"


@pytest.fixture
def admin(db):
    sync_role_groups()  # transactional tests empty the groups the migration made
    user = User.objects.create_user("ada", password="ada-password-1")
    user.groups.add(Group.objects.get(name=ADMIN))
    return user


@pytest.fixture
def console(client, admin):
    client.force_login(admin)
    return client


@pytest.fixture
def api(admin) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin).key}")
    return client


@pytest.fixture
def purge_celery(redis_server):
    """Drop the run messages queued without a worker to take them."""
    yield
    from rsync_admin.celery import app

    app.control.purge()


def last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def one_event(after: int, action: str, obj, actor) -> AuditEvent:
    """Exactly one event since `after`: `action` on `obj` by `actor` (None: the system), from IP."""
    events = list(AuditEvent.objects.filter(id__gt=after).order_by("id"))
    assert [e.action for e in events] == [action], [(e.action, e.object_label, e.diff) for e in events]
    event = events[0]
    assert (event.object_type, event.object_id) == (obj._meta.label_lower, str(obj.pk))
    if actor is None:
        assert (event.actor_id, event.actor_name, event.ip_address) == (None, "system", None)
    else:
        assert (event.actor_id, event.actor_name, event.ip_address) == (actor.pk, actor.username, IP)
        assert event.request_id
    return event


def test_store_create_update_delete_in_the_console(console, admin, tmp_path):
    mark = last_id()
    response = console.post("/stores/new/", {"name": "vectors", "kind": "qdrant", "uri": str(tmp_path / "q"),
                                             "token": "tok-s3cret"}, REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()
    store = VectorStore.objects.get(name="vectors")
    assert one_event(mark, "create", store, admin).diff["token"] == "changed"

    mark = last_id()
    response = console.post(f"/stores/{store.pk}/edit/", {"kind": "qdrant", "uri": str(tmp_path / "other"),
                                                         "token": "tok-s3cret-2"}, REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()
    event = one_event(mark, "update", store, admin)
    assert event.diff == {"uri": [str(tmp_path / "q"), str(tmp_path / "other")], "token": "changed"}

    mark = last_id()
    assert console.post(f"/stores/{store.pk}/delete/", REMOTE_ADDR=IP).status_code == 302
    assert not VectorStore.objects.filter(pk=store.pk).exists()
    one_event(mark, "delete", store, admin)
    assert "s3cret" not in "".join(e.canonical() for e in AuditEvent.objects.all())


def test_source_delete_in_the_console(console, admin):
    source = save_source(name="old-db", host="127.0.0.1", port=devservers.free_port(), database="d", user="u",
                         password="pw")
    mark = last_id()
    assert console.post(f"/sources/{source.pk}/delete/", REMOTE_ADDR=IP).status_code == 302
    assert not DataSource.objects.filter(pk=source.pk).exists()
    event = one_event(mark, "delete", source, admin)
    assert event.object_label == "old-db" and event.diff["password"] == "changed"


def test_an_operator_creating_a_source_records_the_grant_it_gets(client):
    sync_role_groups()
    oscar = User.objects.create_user("oscar", password="oscar-password-1")
    oscar.groups.add(Group.objects.get(name=OPERATOR))
    client.force_login(oscar)
    mark = last_id()
    response = client.post("/sources/new/", {"name": "mine", "kind": "mysql", "host": "db", "port": "3306",
                                             "database": "d", "user": "u"}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    source = DataSource.objects.get(name="mine")
    events = list(AuditEvent.objects.filter(id__gt=mark).order_by("id"))
    assert [e.action for e in events] == ["create", "grant"]
    assert all((e.actor_id, e.ip_address, e.object_id) == (oscar.pk, IP, str(source.pk)) for e in events)
    assert events[1].diff == {"to": "user oscar", "level": "manage", "reason": "creator"}


def test_task_update_start_stop_delete_through_the_api(api, admin, make_task, purge_celery):
    task = make_task(3)
    mark = last_id()
    response = api.patch(f"/api/tasks/{task.pk}/", {"batch_size": 64}, format="json", REMOTE_ADDR=IP)
    assert response.status_code == 200, response.content
    assert one_event(mark, "update", task, admin).diff == {"batch_size": [128, 64]}

    mark = last_id()
    response = api.post(f"/api/tasks/{task.pk}/start/", REMOTE_ADDR=IP)
    assert response.status_code == 202, response.content
    assert one_event(mark, "start", task, admin).diff == {"run": response.json()["id"]}

    mark = last_id()
    assert api.post(f"/api/tasks/{task.pk}/stop/", REMOTE_ADDR=IP).status_code == 200
    one_event(mark, "stop", task, admin)

    mark = last_id()
    assert api.delete(f"/api/tasks/{task.pk}/", REMOTE_ADDR=IP).status_code == 204
    assert not SyncTask.objects.filter(pk=task.pk).exists()
    one_event(mark, "delete", task, admin)


# -- commands: recorded as the system --------------------------------------------------------------


def test_rotate_encryption_keys_is_one_event(settings, capsys):
    for n in range(3):
        save_source(name=f"db-{n}", host="h", port=3306, database="d", user="u", password=f"pw-{n}")
    save_store(name="vectors", uri="http://127.0.0.1:9", token="tok")
    settings.RSYNC_ENCRYPTION_KEYS = [f"k2={Fernet.generate_key().decode()}", *settings.RSYNC_ENCRYPTION_KEYS]
    mark = last_id()
    call_command("rotate_encryption_keys")
    events = list(AuditEvent.objects.filter(id__gt=mark))
    assert [(e.action, e.object_type, e.actor_id, e.actor_name, e.ip_address) for e in events] == [
        ("rotate_keys", "encryption", None, "system", None)
    ]
    assert events[0].diff["re_encrypted"]["datasources.DataSource.password"] == 3
    assert events[0].diff["re_encrypted"]["datasources.VectorStore.token"] == 1


def test_a_rotation_that_stops_changes_nothing_and_is_recorded(settings):
    """A secret under a key that is no longer configured stops the rotation: no secret was
    re-encrypted (all or nothing), and the attempt is in the log."""
    for n in range(3):
        save_source(name=f"db-{n}", host="h", port=3306, database="d", user="u", password=f"pw-{n}")
    old_key = settings.RSYNC_ENCRYPTION_KEYS[0]
    settings.RSYNC_ENCRYPTION_KEYS = [f"lost={Fernet.generate_key().decode()}"]
    save_source(name="db-9", host="h", port=3306, database="d", user="u", password="pw-9")  # under "lost"
    before = dict(DataSource.objects.values_list("name", "password"))
    settings.RSYNC_ENCRYPTION_KEYS = [f"k3={Fernet.generate_key().decode()}", old_key]
    mark = last_id()
    with pytest.raises(CommandError, match="'lost' is not configured.*Nothing was changed"):
        call_command("rotate_encryption_keys")
    assert dict(DataSource.objects.values_list("name", "password")) == before
    event = AuditEvent.objects.get(id__gt=mark)
    assert (event.action, event.actor_name, event.ip_address) == ("rotate_keys_failed", "system", None)
    assert "'lost' is not configured" in event.diff["error"]
    assert SecretDecryptionError.__name__ in event.diff["error"]


def test_apply_config_is_one_event(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_TEST_DB_PASSWORD", "pw-from-env")
    config = tmp_path / "rsync.yaml"
    config.write_text(
        "sources:\n"
        "  - name: shop\n    host: 127.0.0.1\n    database: shop\n    user: rsync\n"
        "    password: ${AUDIT_TEST_DB_PASSWORD}\n"
        f"stores:\n  - name: vectors\n    kind: qdrant\n    uri: {tmp_path / 'q'}\n"
    )
    mark = last_id()
    call_command("apply_config", str(config))
    events = list(AuditEvent.objects.filter(id__gt=mark).order_by("id"))
    assert [(e.action, e.object_label) for e in events] == [
        ("create", "shop"), ("create", "vectors"), ("config_apply", "apply_config")
    ]
    assert all((e.actor_id, e.actor_name, e.ip_address) == (None, "system", None) for e in events)
    assert events[-1].diff == {"changes": ["source shop: created", "store vectors: created"]}
