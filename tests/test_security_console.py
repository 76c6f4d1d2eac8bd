"""The console side of security: users pages, "My account", access panels on sources, stores and
tasks, and the audit log pages (list, CSV export, chain check), per role.

root is a Super admin, admin an Admin, oscar an Operator granted "operate" on the task and "manage"
on the source, vera a Viewer granted "view" on the task, nick an Operator with no grant. Pages that
need a right a role lacks are 403; objects a user may not see are 404.
"""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.urls import reverse
from rest_framework.authtoken.models import Token

from accounts.roles import ADMIN, OPERATOR, SUPER_ADMIN, VIEWER, sync_role_groups
from accounts.services import create_user, grant, set_auditor
from audit.models import AuditEvent
from datasources.services import save_source, save_store
from rsync_admin import devservers
from tasks.services import save_task

PASSWORD = "Zq9-source-password-NEVER-shown"
TOKEN = "root:Zq9-store-token-NEVER-shown"
IP = "203.0.113.77"

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(db):
    sync_role_groups()  # transactional tests elsewhere empty the role groups the migration made
    users = {
        "root": create_user(username="root", password="pw-root-12345", roles=[SUPER_ADMIN]),
        "admin": create_user(username="admin", password="pw-admin-12345", roles=[ADMIN]),
        "oscar": create_user(username="oscar", password="pw-oscar-12345", roles=[OPERATOR]),
        "vera": create_user(username="vera", password="pw-vera-12345", roles=[VIEWER]),
        "nick": create_user(username="nick", password="pw-nick-12345", roles=[OPERATOR]),
    }
    # The source is down (a free port): saving the task reads no catalog and starts nothing.
    source = save_source(name="secret-src", host="127.0.0.1", port=devservers.free_port(), database="shop",
                         user="reader", password=PASSWORD)
    store = save_store(name="secret-store", uri="http://127.0.0.1:9", token=TOKEN)
    task = save_task(name="docs-task", source=source, store=store, table="docs", text_template="{title}")
    grant(task, to=users["oscar"], level="operate")
    grant(source, to=users["oscar"], level="manage")
    grant(task, to=users["vera"], level="view")
    return {"users": users, "source": source, "store": store, "task": task}


def login(client, world, who: str):
    client.force_login(world["users"][who])
    return client


def page(response) -> str:
    return response.content.decode()


def new_events(after: int, *, exclude=("login",)) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(pk__gt=after).exclude(action__in=exclude).order_by("pk"))


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


# -- who sees which page ----------------------------------------------------------------------

ROLES = ["root", "admin", "oscar", "vera", "nick"]


@pytest.mark.parametrize("who", ROLES)
def test_users_pages_per_role(client, world, who):
    login(client, world, who)
    allowed = who in ("root", "admin")
    expected = 200 if allowed else 403
    vera = world["users"]["vera"]
    assert client.get(reverse("accounts:user-list")).status_code == expected
    assert client.get(reverse("accounts:user-create")).status_code == expected
    assert client.get(reverse("accounts:user-detail", args=[vera.pk])).status_code == expected
    if allowed:
        assert client.get(reverse("accounts:user-detail", args=[999_999])).status_code == 404
    for name in ("user-active", "user-password", "user-token", "user-token-revoke", "user-roles"):
        if not allowed:
            assert client.post(reverse(f"accounts:{name}", args=[vera.pk])).status_code == 403, name
    nav = page(client.get(reverse("console:dashboard")))
    assert ('id="nav-users"' in nav) == allowed
    assert ('id="nav-audit"' in nav) == (who == "root")
    assert client.get(reverse("accounts:my-account")).status_code == 200


@pytest.mark.parametrize("who", ROLES)
def test_audit_pages_per_role(client, world, who):
    login(client, world, who)
    expected = 200 if who == "root" else 403
    assert client.get(reverse("audit:event-list")).status_code == expected
    assert client.get(reverse("audit:event-export")).status_code == expected
    assert client.post(reverse("audit:verify")).status_code == expected


# kind -> who -> status of the access panel (200 may change, 403 may only see, 404 may not see)
ACCESS = {
    "task": {"root": 200, "admin": 200, "oscar": 403, "vera": 403, "nick": 404},
    "source": {"root": 200, "admin": 200, "oscar": 200, "vera": 404, "nick": 404},
    "store": {"root": 200, "admin": 200, "oscar": 404, "vera": 404, "nick": 404},
}


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("kind", list(ACCESS))
def test_access_panel_per_role(client, world, who, kind):
    login(client, world, who)
    obj = world[kind]
    expected = ACCESS[kind][who]
    url = reverse("accounts:access", args=[kind, obj.pk])
    assert client.get(url).status_code == expected
    assert client.get(url, HTTP_HX_REQUEST="true").status_code == expected
    grant_post = client.post(reverse("accounts:access-grant", args=[kind, obj.pk]),
                             {"grant-kind": "user", "grant-name": "nick", "grant-level": "view"})
    assert grant_post.status_code == (302 if expected == 200 else expected)
    revoke_post = client.post(reverse("accounts:access-revoke", args=[kind, obj.pk]),
                              {"holder": "user", "pk": world["users"]["nick"].pk})
    assert revoke_post.status_code == (302 if expected == 200 else expected)


def test_the_object_pages_carry_the_access_panel_only_for_those_who_may_change(client, world):
    task, source, store = world["task"], world["source"], world["store"]
    login(client, world, "admin")
    for url, kind, obj in [
        (reverse("console:task-detail", args=[task.pk]), "task", task),
        (reverse("console:source-edit", args=[source.pk]), "source", source),
        (reverse("console:store-edit", args=[store.pk]), "store", store),
    ]:
        html = page(client.get(url))
        assert 'id="access-panel"' in html and reverse("accounts:access", args=[kind, obj.pk]) in html, url
    login(client, world, "vera")
    html = page(client.get(reverse("console:task-detail", args=[task.pk])))
    assert 'id="live-panel"' in html and 'id="access-panel"' not in html


def test_task_page_is_404_without_view_and_start_is_403_with_view_only(client, world):
    task = world["task"]
    login(client, world, "nick")
    assert client.get(reverse("console:task-detail", args=[task.pk])).status_code == 404
    assert client.post(reverse("console:task-start", args=[task.pk])).status_code == 404
    login(client, world, "vera")
    assert client.post(reverse("console:task-start", args=[task.pk])).status_code == 403
    assert client.post(reverse("console:task-stop", args=[task.pk])).status_code == 403


def test_anonymous_users_are_sent_to_login(client, world):
    for url in [reverse("accounts:user-list"), reverse("accounts:my-account"), reverse("audit:event-list"),
                reverse("audit:event-export"), reverse("accounts:access", args=["task", world["task"].pk])]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url


# -- users pages: changes leave one audit event each --------------------------------------------


def only_event(after: int, action: str) -> AuditEvent:
    events = new_events(after)
    assert [e.action for e in events] == [action], [(e.action, e.diff) for e in events]
    return events[0]


def test_create_user_from_the_page(client, world):
    login(client, world, "admin")
    form = page(client.get(reverse("accounts:user-create")))
    assert 'value="Admin"' in form and 'value="Super admin"' not in form  # only roles the admin holds
    before = last_event_id()
    response = client.post(reverse("accounts:user-create"), {
        "username": "newbie", "email": "newbie@example.com", "password": "Long-enough-pw-42", "roles": [OPERATOR],
    }, REMOTE_ADDR=IP, HTTP_USER_AGENT="pytest-browser")
    assert response.status_code == 302, page(response)
    newbie = User.objects.get(username="newbie")
    assert list(newbie.groups.values_list("name", flat=True)) == [OPERATOR] and newbie.check_password(
        "Long-enough-pw-42")
    event = only_event(before, "create")
    assert event.actor_id == world["users"]["admin"].pk and event.actor_name == "admin"
    assert event.ip_address == IP and event.user_agent == "pytest-browser" and event.request_id
    assert event.object_id == str(newbie.pk) and "Long-enough" not in str(event.diff)
    listing = page(client.get(reverse("accounts:user-list")))
    assert f'id="user-row-{newbie.pk}"' in listing and "newbie@example.com" in listing
    assert ">AnonymousUser<" not in listing  # guardian's stand-in for visitors cannot sign in


def test_create_user_refuses_weak_passwords_duplicates_and_roles_above_the_actor(client, world):
    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:user-create"), {"username": "weak", "password": "123"})
    assert response.status_code == 200 and 'id="error-password"' in page(response)
    response = client.post(reverse("accounts:user-create"), {"username": "VERA", "password": "Long-enough-pw-42"})
    assert response.status_code == 200 and 'id="error-username"' in page(response)
    response = client.post(reverse("accounts:user-create"), {
        "username": "climber", "password": "Long-enough-pw-42", "roles": [SUPER_ADMIN]})
    assert response.status_code == 200 and 'id="error-roles"' in page(response)
    assert not User.objects.filter(username__in=["weak", "climber"]).exists()
    assert new_events(before) == []


def test_disable_and_enable_from_the_page(client, world):
    vera = world["users"]["vera"]
    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:user-active", args=[vera.pk]), {"active": "0"}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    vera.refresh_from_db()
    assert not vera.is_active
    event = only_event(before, "disable")
    assert event.actor_name == "admin" and event.ip_address == IP and event.object_id == str(vera.pk)
    assert 'id="user-enable"' in page(client.get(reverse("accounts:user-detail", args=[vera.pk])))
    before = last_event_id()
    client.post(reverse("accounts:user-active", args=[vera.pk]), {"active": "1"}, REMOTE_ADDR=IP)
    only_event(before, "enable")
    # Nobody disables themselves.
    admin = world["users"]["admin"]
    assert client.post(reverse("accounts:user-active", args=[admin.pk]), {"active": "0"}).status_code == 403


def test_reset_password_typed_or_generated_and_shown_once(client, world):
    vera = world["users"]["vera"]
    Token.objects.create(user=vera)
    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:user-password", args=[vera.pk]), {"password": "Typed-new-pw-99"},
                           REMOTE_ADDR=IP)
    assert response.status_code == 302
    vera.refresh_from_db()
    assert vera.check_password("Typed-new-pw-99") and not Token.objects.filter(user=vera).exists()
    event = only_event(before, "reset_password")
    assert event.actor_name == "admin" and event.ip_address == IP and "Typed-new" not in str(event.diff)

    before = last_event_id()
    response = client.post(reverse("accounts:user-password", args=[vera.pk]), {"password": ""}, REMOTE_ADDR=IP)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    shown = response.context["secret"]
    vera.refresh_from_db()
    assert f'id="new-password">{shown}<' in page(response) and vera.check_password(shown)
    assert only_event(before, "reset_password").ip_address == IP
    assert shown not in page(client.get(reverse("accounts:user-detail", args=[vera.pk])))  # once

    response = client.post(reverse("accounts:user-password", args=[vera.pk]), {"password": "short"})
    assert response.status_code == 400 and 'id="error-password"' in page(response)


def test_issue_and_revoke_a_users_token(client, world):
    oscar = world["users"]["oscar"]
    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:user-token", args=[oscar.pk]), REMOTE_ADDR=IP)
    key = Token.objects.get(user=oscar).key
    assert response.status_code == 200 and f'id="new-token">{key}<' in page(response)
    assert only_event(before, "issue_token").ip_address == IP
    detail = page(client.get(reverse("accounts:user-detail", args=[oscar.pk])))
    assert key not in detail and 'id="token-revoke"' in detail
    assert key not in page(client.get(reverse("accounts:user-list")))
    client.post(reverse("accounts:user-token-revoke", args=[oscar.pk]))
    assert not Token.objects.filter(user=oscar).exists()


def test_edit_roles(client, world):
    nick = world["users"]["nick"]
    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:user-roles", args=[nick.pk]), {"roles": [VIEWER]}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    assert list(nick.groups.values_list("name", flat=True)) == [VIEWER]
    event = only_event(before, "update")
    assert event.diff == {"roles": [[OPERATOR], [VIEWER]]} and event.ip_address == IP
    response = client.post(reverse("accounts:user-roles", args=[nick.pk]), {"roles": [SUPER_ADMIN]})
    assert response.status_code == 400
    assert list(nick.groups.values_list("name", flat=True)) == [VIEWER]


def test_an_admin_cannot_take_over_a_super_admin(client, world):
    root = world["users"]["root"]
    login(client, world, "admin")
    detail = page(client.get(reverse("accounts:user-detail", args=[root.pk])))
    assert 'id="user-read-only"' in detail and 'id="password-reset"' not in detail
    before = last_event_id()
    for name, data in [("user-password", {"password": "Taken-over-pw-1"}), ("user-token", {}),
                       ("user-active", {"active": "0"}), ("user-roles", {"roles": [VIEWER]}),
                       ("user-auditor", {"auditor": "0"})]:
        assert client.post(reverse(f"accounts:{name}", args=[root.pk]), data).status_code == 403, name
    root.refresh_from_db()
    assert root.is_active and root.check_password("pw-root-12345") and not Token.objects.filter(user=root).exists()
    assert new_events(before) == []


def test_my_account_issues_and_revokes_my_own_token(client, world):
    vera = world["users"]["vera"]
    login(client, world, "vera")
    html = page(client.get(reverse("accounts:my-account")))
    assert 'id="token-issue"' in html and "You have no token" in html
    before = last_event_id()
    response = client.post(reverse("accounts:my-token"), REMOTE_ADDR=IP)
    key = Token.objects.get(user=vera).key
    assert f'id="new-token">{key}<' in page(response) and response["Cache-Control"] == "no-store"
    event = only_event(before, "issue_token")
    assert event.actor_name == "vera" and event.object_id == str(vera.pk)
    html = page(client.get(reverse("accounts:my-account")))
    assert key not in html and 'id="token-revoke"' in html
    client.post(reverse("accounts:my-token-revoke"))
    assert not Token.objects.filter(user=vera).exists()


# -- auditors ---------------------------------------------------------------------------------


def test_auditor_rights_are_granted_on_the_users_page(client, world):
    vera = world["users"]["vera"]
    assert client.get(reverse("audit:event-list")).status_code == 302
    login(client, world, "admin")  # an Admin cannot read the log, so cannot hand out the right either
    assert 'id="user-auditor"' not in page(client.get(reverse("accounts:user-detail", args=[vera.pk])))
    assert client.post(reverse("accounts:user-auditor", args=[vera.pk]), {"auditor": "1"}).status_code == 403

    login(client, world, "root")
    assert 'id="auditor-grant"' in page(client.get(reverse("accounts:user-detail", args=[vera.pk])))
    before = last_event_id()
    assert client.post(reverse("accounts:user-auditor", args=[vera.pk]), {"auditor": "1"},
                       REMOTE_ADDR=IP).status_code == 302
    event = only_event(before, "grant_auditor")
    assert event.actor_name == "root" and event.ip_address == IP

    login(client, world, "vera")
    assert client.get(reverse("audit:event-list")).status_code == 200
    assert client.get(reverse("audit:event-export")).status_code == 200
    assert 'id="nav-audit"' in page(client.get(reverse("console:dashboard")))
    assert client.get(reverse("accounts:user-list")).status_code == 403  # still a Viewer otherwise

    login(client, world, "root")
    client.post(reverse("accounts:user-auditor", args=[vera.pk]), {"auditor": "0"})
    login(client, world, "vera")
    assert client.get(reverse("audit:event-list")).status_code == 403


def test_view_only_auditors_cannot_export(client, world):
    from django.contrib.auth.models import Permission

    nick = world["users"]["nick"]
    nick.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    login(client, world, "nick")
    html = page(client.get(reverse("audit:event-list")))
    assert 'id="audit-table"' in html and 'id="audit-export"' not in html
    assert client.get(reverse("audit:event-export")).status_code == 403


# -- grants from the access panel ---------------------------------------------------------------


def test_grant_and_revoke_on_a_task_from_the_panel(client, world):
    task, nick = world["task"], world["users"]["nick"]
    login(client, world, "admin")
    panel = page(client.get(reverse("accounts:access", args=["task", task.pk]), HTTP_HX_REQUEST="true"))
    assert f'id="access-user-{world["users"]["oscar"].pk}"' in panel and "operate" in panel
    assert '<option value="operate"' in panel
    before = last_event_id()
    response = client.post(reverse("accounts:access-grant", args=["task", task.pk]),
                           {"grant-kind": "user", "grant-name": "nick", "grant-level": "operate"},
                           HTTP_HX_REQUEST="true", REMOTE_ADDR=IP)
    assert response.status_code == 200 and f'id="access-user-{nick.pk}"' in page(response)
    event = only_event(before, "grant")
    assert event.actor_name == "admin" and event.ip_address == IP
    assert event.object_type == "tasks.synctask" and event.diff == {"to": "user nick", "level": "operate"}
    login(client, world, "nick")
    assert client.get(reverse("console:task-detail", args=[task.pk])).status_code == 200

    login(client, world, "admin")
    before = last_event_id()
    response = client.post(reverse("accounts:access-revoke", args=["task", task.pk]),
                           {"holder": "user", "pk": nick.pk}, REMOTE_ADDR=IP)
    assert response.status_code == 302
    assert only_event(before, "revoke").ip_address == IP
    login(client, world, "nick")
    assert client.get(reverse("console:task-detail", args=[task.pk])).status_code == 404


def test_grant_to_a_group_and_the_levels_each_kind_offers(client, world):
    store = world["store"]
    login(client, world, "admin")
    panel = page(client.get(reverse("accounts:access", args=["store", store.pk])))
    assert '<option value="operate"' not in panel and '<option value="manage"' in panel
    response = client.post(reverse("accounts:access-grant", args=["store", store.pk]),
                           {"grant-kind": "user", "grant-name": "vera", "grant-level": "operate"})
    assert response.status_code == 400 and 'id="error-grant-level"' in page(response)
    response = client.post(reverse("accounts:access-grant", args=["store", store.pk]),
                           {"grant-kind": "user", "grant-name": "nobody", "grant-level": "view"})
    assert response.status_code == 400 and 'id="error-grant-name"' in page(response)
    before = last_event_id()
    client.post(reverse("accounts:access-grant", args=["store", store.pk]),
                {"grant-kind": "group", "grant-name": VIEWER, "grant-level": "view"}, REMOTE_ADDR=IP)
    assert only_event(before, "grant").diff == {"to": f"group {VIEWER}", "level": "view"}
    login(client, world, "vera")  # a Viewer, so a member of the group
    assert store.name in page(client.get(reverse("console:store-list")))


def test_an_operator_grants_only_what_they_hold(client, world):
    """oscar manages the source: he may share it (view or manage); the panel of the task, which he
    may only operate, is forbidden."""
    source = world["source"]
    login(client, world, "oscar")
    panel = page(client.get(reverse("accounts:access", args=["source", source.pk])))
    assert '<option value="manage"' in panel and 'id="access-names"' not in panel  # no user list for him
    response = client.post(reverse("accounts:access-grant", args=["source", source.pk]),
                           {"grant-kind": "user", "grant-name": "nick", "grant-level": "view"})
    assert response.status_code == 302
    login(client, world, "nick")
    assert source.name in page(client.get(reverse("console:source-list")))


# -- the audit log pages ----------------------------------------------------------------------


def test_audit_list_filters_and_paginates(client, world):
    login(client, world, "root")
    html = page(client.get(reverse("audit:event-list")))
    grant_event = AuditEvent.objects.filter(action="grant", object_type="tasks.synctask").first()
    assert f'id="event-{grant_event.pk}"' in html and "user oscar" in html
    html = page(client.get(reverse("audit:event-list"), {"action": "grant", "object_type": "datasources.datasource"}))
    shown = AuditEvent.objects.filter(action="grant", object_type="datasources.datasource")
    assert shown.count() == 1 and f'id="event-{shown[0].pk}"' in html and f'id="event-{grant_event.pk}"' not in html
    html = page(client.get(reverse("audit:event-list"), {"actor": "nobody-at-all"}))
    assert 'id="audit-empty"' in html
    html = page(client.get(reverse("audit:event-list"), {"since": "2999-01-01"}))
    assert 'id="audit-empty"' in html
    html = page(client.get(reverse("audit:event-list"), {"since": "not a date"}))
    assert 'id="error-since"' in html and 'id="audit-table"' in html
    html = page(client.get(reverse("audit:event-list"), {"object_label": "secret-s", "until": "2999-12-31"}))
    assert "secret-src" in html and "secret-store" in html and "docs-task" not in html.split('id="audit-table"')[1]
    for n in range(60):
        set_auditor(world["users"]["nick"], n % 2 == 0)
    html = page(client.get(reverse("audit:event-list"), {"object_id": world["users"]["nick"].pk}))
    assert 'id="audit-next"' in html and "page 1 of 2" in html
    html = page(client.get(reverse("audit:event-list"), {"object_id": world["users"]["nick"].pk, "page": 2}))
    assert 'id="audit-prev"' in html and "page 2 of 2" in html


def test_csv_export_has_the_filtered_rows_and_no_secrets(client, world):
    save_source(name="secret-src", host="127.0.0.1", port=1, database="shop", user="reader",
                password=PASSWORD + "-rotated")
    login(client, world, "root")
    response = client.get(reverse("audit:event-export"), {"object_type": "datasources.datasource"},
                          REMOTE_ADDR=IP)
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    expected = AuditEvent.objects.filter(object_type="datasources.datasource").order_by("-id")
    assert [int(r["id"]) for r in rows] == [e.pk for e in expected]
    assert {r["action"] for r in rows} == {"create", "update", "grant"}
    update = next(r for r in rows if r["action"] == "update")
    assert '"password": "changed"' in update["diff"] and update["object_label"] == "secret-src"
    assert PASSWORD not in body and world["source"].password not in body
    export = AuditEvent.objects.filter(action="export").get()  # the export itself is recorded
    assert export.actor_name == "root" and export.ip_address == IP
    assert export.diff == {"filters": {"object_type": "datasources.datasource"}}


def test_csv_cells_cannot_be_formulas(client, world):
    save_store(name="formula-store", uri="=HYPERLINK(\"http://evil\")")
    login(client, world, "root")
    body = b"".join(client.get(reverse("audit:event-export")).streaming_content).decode()
    assert "=HYPERLINK" in body
    for row in csv.reader(io.StringIO(body)):
        assert not any(cell.startswith(("=", "+", "@")) for cell in row), row


def test_verify_chain_button(client, world):
    login(client, world, "root")
    html = page(client.get(reverse("audit:event-list")))
    assert 'id="audit-verify"' in html
    response = client.post(reverse("audit:verify"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'id="verify-ok"' in page(response)
    victim = AuditEvent.objects.filter(action="grant").first()
    with connection.cursor() as cur:  # the test session runs without the append-only triggers
        cur.execute("UPDATE audit_auditevent SET object_label = %s WHERE id = %s", ["forged", victim.pk])
    html = page(client.post(reverse("audit:verify")))
    assert 'id="verify-broken"' in html and f"event {victim.pk} was altered" in html


# -- secrets ----------------------------------------------------------------------------------


def test_no_page_contains_the_source_password_or_store_token(client, world):
    source, store, task = world["source"], world["store"], world["task"]
    save_source(name="secret-src", host="127.0.0.1", port=1, database="shop", user="reader",
                password=PASSWORD + "-2")
    root = world["users"]["root"]
    Token.objects.create(user=root)
    login(client, world, "root")
    urls = [
        reverse("console:dashboard"), reverse("console:source-list"), reverse("console:store-list"),
        reverse("console:task-list"), reverse("console:source-edit", args=[source.pk]),
        reverse("console:store-edit", args=[store.pk]), reverse("console:task-detail", args=[task.pk]),
        reverse("accounts:access", args=["source", source.pk]), reverse("accounts:access", args=["store", store.pk]),
        reverse("accounts:access", args=["task", task.pk]), reverse("accounts:user-list"),
        reverse("accounts:user-detail", args=[root.pk]), reverse("accounts:my-account"),
        reverse("audit:event-list"), reverse("audit:event-list") + "?object_type=datasources.datasource",
        reverse("audit:event-export"),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        text = body.decode()
        assert PASSWORD not in text and TOKEN not in text, url
        source.refresh_from_db()
        assert source.password not in text and store.token not in text, url  # the encrypted envelopes
        assert Token.objects.get(user=root).key not in text, url
