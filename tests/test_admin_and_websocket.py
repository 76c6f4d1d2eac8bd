"""Django admin masks secrets and changes everything through the services (audited, guarded, like
the console); the websocket pushes task events in seq order to signed-in users."""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission, User
from rest_framework.authtoken.models import Token

from accounts.roles import ADMIN, OPERATOR, SUPER_ADMIN, VIEWER, sync_role_groups
from accounts.services import create_user, grant, issue_token, set_roles
from audit.models import AuditEvent
from datasources.models import DataSource, EmbeddingModel
from datasources.services import save_source
from rsync_admin import devservers
from rsync_admin.asgi import application
from tasks import events
from tasks.models import Checkpoint, SyncTask
from tasks.services import save_task, start_task, stop_task

from .helpers import admin_form_data, websocket_outcome

pytestmark = pytest.mark.django_db(transaction=True)

IP = "203.0.113.9"


@pytest.fixture
def admin_user():
    return User.objects.create_superuser("root", "root@example.com", "a-long-admin-password")


@pytest.fixture
def roles(db):
    sync_role_groups()  # transactional tests empty the role groups the migration made


def events_after(after: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(pk__gt=after).exclude(action="login").order_by("pk"))


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def messages_of(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


def test_admin_pages_never_show_secrets(client, admin_user, make_task, roles):
    task = make_task(3)
    source = task.source
    source.password = "s3cret-Passw0rd"
    source.save()
    key = issue_token(admin_user)
    client.force_login(admin_user)
    for url in [
        "/admin/", "/admin/datasources/datasource/", f"/admin/datasources/datasource/{source.pk}/change/",
        "/admin/datasources/vectorstore/", f"/admin/datasources/vectorstore/{task.store.pk}/change/",
        "/admin/tasks/synctask/", f"/admin/tasks/synctask/{task.pk}/change/", "/admin/tasks/syncrun/",
        "/admin/tasks/deadletter/", "/admin/auth/user/", f"/admin/auth/user/{admin_user.pk}/change/",
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert "s3cret-Passw0rd" not in body and "enc:v1:" not in body and key not in body, url
    assert "A value is set" in client.get(f"/admin/datasources/datasource/{source.pk}/change/").content.decode()
    # DRF's token admin lists every key in clear: it is not there at all.
    for url in ("/admin/authtoken/tokenproxy/", f"/admin/authtoken/tokenproxy/{key}/change/",
                "/admin/authtoken/"):
        assert client.get(url).status_code == 404, url
    assert "authtoken" not in client.get("/admin/").content.decode()
    # Someone who may only view the source gets a page of text: the secret is "set", nothing more.
    viewer = create_user(username="vera", password="pw-vera-12345", roles=[VIEWER])
    viewer.is_staff = True
    viewer.save()
    grant(source, to=viewer, level="view")
    client.force_login(viewer)
    body = client.get(f"/admin/datasources/datasource/{source.pk}/change/").content.decode()
    assert "s3cret-Passw0rd" not in body and "enc:v1:" not in body
    assert "View data source" in body and ">set<" in body


def test_admin_edit_without_password_keeps_it(client, admin_user, make_task):
    task = make_task(3)
    source = task.source
    source.password = "keep-me"
    source.save()
    client.force_login(admin_user)
    response = client.post(f"/admin/datasources/datasource/{source.pk}/change/", {
        "name": source.name, "kind": "mysql", "host": source.host, "port": source.port,
        "database": source.database, "user": source.user, "password": "",
    })
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.get_password() == "keep-me"


# -- admin changes go through the services -------------------------------------------------------


def test_an_operator_creates_edits_and_deletes_a_source_in_admin_through_the_service(client, roles, mariadb):
    """Audited with actor and address, the creator is granted the source, the name stays, the
    password is write-only (and "changed" in the audit log)."""
    oscar = create_user(username="oscar", password="pw-oscar-12345", roles=[OPERATOR])
    oscar.is_staff = True  # a Super admin let this Operator into Django admin
    oscar.save()
    client.force_login(oscar)
    before = last_event_id()
    add = client.get("/admin/datasources/datasource/add/")
    response = client.post("/admin/datasources/datasource/add/", admin_form_data(
        add, name="oscars-db", kind="mysql", host="127.0.0.1", port=mariadb.port, database="shop", user="root",
        password="first-s3cret"), REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()[:2000]
    source = DataSource.objects.get(name="oscars-db")
    assert source.get_password() == "first-s3cret"
    # Created, and (an Operator has no model-wide rights) granted to its creator, in one transaction.
    event, grant_event = events_after(before)
    assert (event.action, event.actor_name, event.ip_address, event.object_id) == ("create", "oscar", IP,
                                                                                   str(source.pk))
    assert event.diff["password"] == "changed"
    assert (grant_event.action, grant_event.object_id, grant_event.diff["reason"]) == ("grant", str(source.pk),
                                                                                       "creator")
    # The creator manages it (an Operator has no model-wide rights): it is theirs to change.
    change_url = f"/admin/datasources/datasource/{source.pk}/change/"
    shown = client.get(change_url)
    assert shown.status_code == 200 and 'name="name"' not in shown.content.decode()  # names are fixed

    before = last_event_id()
    response = client.post(change_url, admin_form_data(shown, port=3307, password="second-s3cret"), REMOTE_ADDR=IP)
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.port == 3307 and source.get_password() == "second-s3cret"
    [event] = events_after(before)
    assert event.action == "update" and event.diff == {"port": [mariadb.port, 3307], "password": "changed"}
    assert "s3cret" not in event.canonical()

    response = client.post(change_url, admin_form_data(client.get(change_url), clear_password="on"))
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.password == ""

    before = last_event_id()
    response = client.post(f"/admin/datasources/datasource/{source.pk}/delete/", {"post": "yes"}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    assert not DataSource.objects.filter(pk=source.pk).exists()
    [event] = events_after(before)
    assert (event.action, event.actor_name, event.object_id) == ("delete", "oscar", str(source.pk))


def test_a_task_saved_in_admin_gets_its_primary_key_checkpoint_and_audit_entry(client, roles, make_task):
    existing = make_task(2)
    admin = create_user(username="adam", password="pw-adam-12345", roles=[ADMIN])
    assert admin.is_staff  # the Admin role carries staff status
    client.force_login(admin)
    before = last_event_id()
    add = client.get("/admin/tasks/synctask/add/")
    response = client.post("/admin/tasks/synctask/add/", admin_form_data(
        add, name="admin-made", source=existing.source_id, store=existing.store_id, table="docs",
        text_template="{title}", collection="admin_made", payload_columns='["name"]'), REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()[:3000]
    task = SyncTask.objects.get(name="admin-made")
    assert task.primary_key == ["id"], "read from the source's catalog"
    assert Checkpoint.objects.filter(task=task).exists()
    [event] = events_after(before)
    assert (event.action, event.actor_name, event.ip_address, event.object_id) == ("create", "adam", IP,
                                                                                   str(task.pk))


def test_admin_checks_a_task_by_the_same_rules_as_the_console_and_api(client, roles, make_task):
    existing = make_task(2)
    client.force_login(create_user(username="adam", password="pw-adam-12345", roles=[ADMIN]))
    add = client.get("/admin/tasks/synctask/add/")
    response = client.post("/admin/tasks/synctask/add/", admin_form_data(
        add, name="admin-bad", source=existing.source_id, store=existing.store_id, table="docs",
        text_template="{title} {nope}", collection="admin_bad", payload_columns='["name"]'))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "nope" in " ".join(errors["text_template"]), errors
    assert not SyncTask.objects.filter(name="admin-bad").exists()


def test_admin_refuses_to_delete_a_running_task_with_a_message(client, roles, make_task):
    """Alone or in "delete selected", a running task is refused with the service's message (not a
    500) and the others are deleted."""
    running, stopped = make_task(1), make_task(1, table="others")
    start_task(running, enqueue=False)
    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    client.force_login(root)
    before = last_event_id()
    response = client.post(f"/admin/tasks/synctask/{running.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1] == (f"/admin/tasks/synctask/{running.pk}/change/", 302)
    assert messages_of(response) == [f"Task {running.name!r} is running: stop it first and delete it once its "
                                     f"run has ended."]
    assert SyncTask.objects.filter(pk=running.pk).exists() and events_after(before) == []

    response = client.post("/admin/tasks/synctask/", {
        "action": "delete_selected", "_selected_action": [running.pk, stopped.pk], "post": "yes"}, follow=True)
    assert response.status_code == 200
    assert messages_of(response) == [
        f"{running.name}: Task {running.name!r} is running: stop it first and delete it once its run has ended.",
        "Deleted 1 sync task.",
    ]
    assert list(SyncTask.objects.values_list("name", flat=True)) == [running.name]
    assert [(e.action, e.object_id) for e in events_after(before)] == [("delete", str(stopped.pk))]

    stop_task(running)  # stopped, its queued run ended: now it goes
    response = client.post(f"/admin/tasks/synctask/{running.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not SyncTask.objects.exists()


def test_admin_says_why_a_postgres_task_cannot_be_deleted_while_its_server_is_down(client, roles, make_task):
    """Deleting a PostgreSQL task drops its replication slot; with the server down the delete is
    refused with how to drop it by hand, and nothing is deleted."""
    existing = make_task(0)
    source = save_source(name="pg-down", kind="postgresql", host="127.0.0.1", port=devservers.free_port(),
                         database="shop", user="reader", password="pw")
    task = save_task(name="pg-task", source=source, store=existing.store, table="docs", text_template="{title}")
    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    client.force_login(root)
    response = client.post(f"/admin/tasks/synctask/{task.pk}/delete/", {"post": "yes"}, follow=True)
    [message] = messages_of(response)
    assert message.startswith(f"Cannot drop replication slot and publication rsync_task_{task.pk} on 127.0.0.1:")
    assert "drop them by hand" in message
    assert SyncTask.objects.filter(pk=task.pk).exists()
    assert not AuditEvent.objects.filter(action="delete", object_id=str(task.pk)).exists()


def test_embedding_models_in_admin_are_audited_without_their_key(client, roles):
    adam = create_user(username="adam", password="pw-adam-12345", roles=[ADMIN])
    client.force_login(adam)
    before = last_event_id()
    add = client.get("/admin/datasources/embeddingmodel/add/")
    assert add.status_code == 200
    response = client.post("/admin/datasources/embeddingmodel/add/", admin_form_data(
        add, name="openai-small", kind="openai", model_name="text-embedding-3-small",
        base_url="https://api.example.com/v1", api_key="sk-Zq9-NEVER-shown", dimension=1536))
    assert response.status_code == 302, response.content.decode()[:2000]
    model = EmbeddingModel.objects.get(name="openai-small")
    assert model.get_api_key() == "sk-Zq9-NEVER-shown" and model.api_key.startswith("enc:v1:")
    url = f"/admin/datasources/embeddingmodel/{model.pk}/change/"
    response = client.post(url, admin_form_data(client.get(url), dimension=512))
    assert response.status_code == 302
    response = client.post(f"/admin/datasources/embeddingmodel/{model.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not EmbeddingModel.objects.exists()
    events = events_after(before)
    assert [(e.action, e.actor_name) for e in events] == [("create", "adam"), ("update", "adam"),
                                                          ("delete", "adam")]
    assert events[0].diff["api_key"] == "changed" and events[1].diff == {"dimension": [1536, 512]}
    assert all("NEVER-shown" not in e.canonical() and "enc:v1" not in e.canonical() for e in events)


# -- users and roles in admin -------------------------------------------------------------------


def test_users_made_and_changed_in_admin_are_audited(client, roles):
    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    client.force_login(root)
    before = last_event_id()
    add = client.get("/admin/auth/user/add/")
    response = client.post("/admin/auth/user/add/", admin_form_data(
        add, username="newbie", usable_password="true", password1="Long-enough-pw-42",
        password2="Long-enough-pw-42"), REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()[:2000]
    newbie = User.objects.get(username="newbie")
    assert newbie.check_password("Long-enough-pw-42")
    [event] = events_after(before)
    assert (event.action, event.actor_name, event.ip_address, event.object_id) == ("create", "root", IP,
                                                                                   str(newbie.pk))
    assert "Long-enough" not in event.canonical()

    # Roles, direct permissions and fields in one save: one entry with every change.
    url = f"/admin/auth/user/{newbie.pk}/change/"
    operator = Group.objects.get(name=OPERATOR)
    view_runs = Permission.objects.get(codename="view_syncrun")
    before = last_event_id()
    response = client.post(url, admin_form_data(
        client.get(url), email="newbie@example.com", groups=[operator.pk], user_permissions=[view_runs.pk]),
        REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()[:2000]
    [event] = events_after(before)
    assert event.action == "update" and event.diff == {
        "email": ["", "newbie@example.com"], "roles": [[], [OPERATOR]],
        "permissions": [[], ["tasks.view_syncrun"]],
    }
    assert list(newbie.groups.values_list("name", flat=True)) == [OPERATOR]

    # Giving the Admin role gives staff status with it (recorded in the same entry).
    before = last_event_id()
    client.post(url, admin_form_data(client.get(url), groups=[Group.objects.get(name=ADMIN).pk]))
    newbie.refresh_from_db()
    [event] = events_after(before)
    assert newbie.is_staff and event.diff["is_staff"] == [False, True]

    # Disabling alone is recorded as "disable", as the console's switch records it.
    before = last_event_id()
    form = admin_form_data(client.get(url))
    form.pop("is_active")
    client.post(url, form)
    [event] = events_after(before)
    assert event.action == "disable" and event.diff == {"is_active": [True, False]}

    # A password set in admin is a reset: audited, and the API token goes with the old password.
    Token.objects.create(user=newbie)
    before = last_event_id()
    response = client.post(f"/admin/auth/user/{newbie.pk}/password/", {
        "password1": "Another-long-pw-7", "password2": "Another-long-pw-7", "usable_password": "true",
        "set-password": "1"})
    assert response.status_code == 302
    newbie.refresh_from_db()
    assert newbie.check_password("Another-long-pw-7") and not Token.objects.filter(user=newbie).exists()
    [event] = events_after(before)
    assert event.action == "reset_password" and event.diff == {"password": "changed"}

    before = last_event_id()
    response = client.post(f"/admin/auth/user/{newbie.pk}/delete/", {"post": "yes"}, REMOTE_ADDR=IP)
    assert response.status_code == 302 and not User.objects.filter(pk=newbie.pk).exists()
    [event] = events_after(before)
    assert (event.action, event.object_id, event.object_label) == ("delete", str(newbie.pk), "newbie")


def test_roles_made_and_changed_in_admin_are_audited(client, roles):
    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    client.force_login(root)
    view_runs = Permission.objects.get(codename="view_syncrun")
    view_letters = Permission.objects.get(codename="view_deadletter")
    before = last_event_id()
    response = client.post("/admin/auth/group/add/", admin_form_data(
        client.get("/admin/auth/group/add/"), name="Run readers", permissions=[view_runs.pk]), REMOTE_ADDR=IP)
    assert response.status_code == 302, response.content.decode()[:2000]
    group = Group.objects.get(name="Run readers")
    url = f"/admin/auth/group/{group.pk}/change/"
    client.post(url, admin_form_data(client.get(url), permissions=[view_runs.pk, view_letters.pk]))
    member = create_user(username="reader", password="pw-reader-12345", roles=["Run readers"])
    response = client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Group.objects.filter(pk=group.pk).exists()
    events = [e for e in events_after(before) if e.object_type == "auth.group"]
    assert [(e.action, e.actor_name) for e in events] == [("create", "root"), ("update", "root"), ("delete", "root")]
    assert events[0].ip_address == IP and events[0].diff["permissions"] == [None, ["tasks.view_syncrun"]]
    assert events[1].diff == {"permissions": [["tasks.view_syncrun"], ["tasks.view_deadletter", "tasks.view_syncrun"]]}
    assert events[2].diff["members"] == [[member.username], None]
    # Built-in roles keep their names and stay.
    builtin = Group.objects.get(name=VIEWER)
    assert client.post(f"/admin/auth/group/{builtin.pk}/delete/", {"post": "yes"}).status_code == 403
    assert 'name="name"' not in client.get(f"/admin/auth/group/{builtin.pk}/change/").content.decode()


def test_an_admin_cannot_raise_anyone_in_admin_above_their_own_rights(client, roles):
    """As in the console: an Admin changes only users whose rights they hold, gives only roles and
    permissions they hold, and makes nobody a superuser."""
    adam = create_user(username="adam", password="pw-adam-12345", roles=[ADMIN])
    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    vera = create_user(username="vera", password="pw-vera-12345", roles=[VIEWER])
    client.force_login(adam)
    root_url = f"/admin/auth/user/{root.pk}/change/"
    assert client.get(root_url).status_code == 200  # may see the Super admin, read-only
    assert client.post(root_url, {"username": "root", "is_active": ""}).status_code == 403
    assert client.post(f"/admin/auth/user/{root.pk}/password/", {
        "password1": "Taken-over-pw-1", "password2": "Taken-over-pw-1"}).status_code == 403
    root.refresh_from_db()
    assert root.is_active and root.check_password("pw-root-12345")

    vera_url = f"/admin/auth/user/{vera.pk}/change/"
    shown = client.get(vera_url)
    page = shown.content.decode()
    assert 'name="is_superuser"' not in page and ">Super admin<" not in page
    response = client.post(vera_url, admin_form_data(shown, groups=[Group.objects.get(name=SUPER_ADMIN).pk]))
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    response = client.post(vera_url, admin_form_data(shown, is_superuser="on"))
    assert response.status_code == 302
    vera.refresh_from_db()
    assert not vera.is_superuser and list(vera.groups.values_list("name", flat=True)) == [VIEWER]
    # Roles: an Admin may look at them but not change them (no auth.change_group).
    group = Group.objects.get(name=ADMIN)
    assert client.get(f"/admin/auth/group/{group.pk}/change/").status_code == 200
    assert client.post(f"/admin/auth/group/{group.pk}/change/", {"permissions": []}).status_code == 403
    # Nobody deletes themselves.
    assert client.post(f"/admin/auth/user/{adam.pk}/delete/", {"post": "yes"}).status_code == 403


def test_staff_status_follows_the_administrator_roles_when_they_change(roles):
    user = create_user(username="sam", password="pw-sam-12345", roles=[VIEWER])
    assert not user.is_staff
    set_roles(user, [ADMIN])
    user.refresh_from_db()
    assert user.is_staff
    set_roles(user, [VIEWER])
    user.refresh_from_db()
    assert not user.is_staff
    event = AuditEvent.objects.filter(object_id=str(user.pk)).order_by("-pk").first()
    assert event.diff == {"roles": [[ADMIN], [VIEWER]], "is_staff": [True, False]}
    # Staff status ticked by hand for an Operator is not taken away by an unrelated role change.
    user.is_staff = True
    user.save()
    set_roles(user, [OPERATOR])
    user.refresh_from_db()
    assert user.is_staff


def test_websocket_rejects_anonymous_users(make_task):
    """Accepted, then closed with 4401: a browser sees the code (a refused handshake would reach it
    as 1006, which the page cannot tell from a network failure)."""
    task = make_task(1)
    assert websocket_outcome(task.pk) == 4401


def test_websocket_delivers_events_in_seq_order(make_task, admin_user, client):
    task = make_task(1)
    client.force_login(admin_user)
    session_cookie = client.cookies["sessionid"].value

    async def exchange():
        communicator = WebsocketCommunicator(
            application, f"/ws/tasks/{task.pk}/",
            headers=[(b"origin", b"http://localhost"), (b"cookie", f"sessionid={session_cookie}".encode())],
        )
        connected, _ = await communicator.connect()
        assert connected
        from asgiref.sync import sync_to_async

        for i in range(5):
            await sync_to_async(events.publish)(task.pk, {"type": "progress", "done": i})
        received = [await communicator.receive_json_from(timeout=5) for _ in range(5)]
        await communicator.disconnect()
        return received

    received = asyncio.run(exchange())
    seqs = [event["seq"] for event in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [event["done"] for event in received] == [0, 1, 2, 3, 4]
    # The same events are there for a page that catches up after a dropped socket.
    caught_up = events.events_after(task.pk, after=seqs[1])
    assert [e["seq"] for e in caught_up] == seqs[2:]


def test_the_audit_log_is_read_only_in_admin(client, roles):
    from audit.models import AuditEvent

    root = create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN])
    client.force_login(root)
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None  # creating root was recorded
    listed = client.get("/admin/audit/auditevent/")
    assert listed.status_code == 200 and event.action in listed.content.decode()
    shown = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert shown.status_code == 200 and 'type="submit"' not in shown.content.decode().split('id="content"')[1]
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    # An Admin (no audit rights) does not see it.
    client.force_login(create_user(username="adam", password="pw-adam-12345", roles=[ADMIN]))
    assert client.get("/admin/audit/auditevent/").status_code == 403
