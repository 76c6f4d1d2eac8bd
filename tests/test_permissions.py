"""The permission matrix: each role, with and without an object grant, x each action on a source, a
store and a task, on every surface (console pages, REST API, Django admin, websocket).

Six users: a Super admin and an Admin (model-wide rights); an Operator granted "manage" on the
source and the store and "operate" on the task; an Operator with no grant; a Viewer granted "view"
on all three; a Viewer with no grant. Outcomes: "ok" (allowed, and done), 403 (may see it, may not
do that) and 404 (may not see it: it does not exist for them). Creating needs the model-wide
"add" right; "pick" is an Operator without grants creating a task: allowed to create, but the
source it names is not one they can see, so the form or request is refused as invalid input.

The matrix is one table (`MATRIX`); each surface has a probe per action that turns the exact HTTP
answer into an outcome and fails on any other status code.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.roles import ADMIN, OPERATOR, SUPER_ADMIN, VIEWER, sync_role_groups
from accounts.services import create_user, grant, issue_token, revoke_token, set_active
from datasources.models import DataSource, VectorStore
from datasources.services import save_source, save_store
from tasks.models import SyncRun, SyncTask

from .helpers import admin_form_data, form_data, websocket_outcome

pytestmark = pytest.mark.django_db

USERS = ["super", "admin", "operator", "operator_nogrant", "viewer", "viewer_nogrant"]
ROLE_OF = {"super": SUPER_ADMIN, "admin": ADMIN, "operator": OPERATOR, "operator_nogrant": OPERATOR,
           "viewer": VIEWER, "viewer_nogrant": VIEWER}

MATRIX = """
kind    action  super  admin  operator  operator_nogrant  viewer  viewer_nogrant
source  create  ok     ok     ok        ok                403     403
source  view    ok     ok     ok        404               ok      404
source  change  ok     ok     ok        404               403     404
source  delete  ok     ok     ok        404               403     404
store   create  ok     ok     ok        ok                403     403
store   view    ok     ok     ok        404               ok      404
store   change  ok     ok     ok        404               403     404
store   delete  ok     ok     ok        404               403     404
task    create  ok     ok     ok        pick              403     403
task    view    ok     ok     ok        404               ok      404
task    change  ok     ok     403       404               403     404
task    start   ok     ok     ok        404               403     404
task    stop    ok     ok     ok        404               403     404
task    delete  ok     ok     403       404               403     404
"""


def _parse(table: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = [line.split() for line in table.strip().splitlines()]
    header, rows = lines[0][2:], lines[1:]
    assert header == USERS
    return {(row[0], row[1]): dict(zip(header, row[2:])) for row in rows}


EXPECTED = _parse(MATRIX)
ACTIONS = {kind: [action for k, action in EXPECTED if k == kind] for kind in ("source", "store", "task")}
MODELS = {"source": DataSource, "store": VectorStore, "task": SyncTask}


@pytest.fixture
def store_kind() -> str:
    """Qdrant in local mode: no server to start, and nothing in this file writes vectors."""
    return "qdrant"


@dataclass
class World:
    users: dict[str, User]
    objects: dict[str, DataSource | VectorStore | SyncTask]
    database: str
    mariadb_port: int
    folder: str


@pytest.fixture
def world(make_task, mariadb, source_db, tmp_path) -> World:
    sync_role_groups()  # transactional tests empty the role groups the migration made
    # The task reads a real table (starting it checks its source); its own source and store are
    # not granted to anyone, so only Admins see them.
    task = make_task(1, mode="full")
    database, _ = source_db
    source = save_source(name="matrix-source", kind="mysql", host="127.0.0.1", port=mariadb.port,
                         database=database, user="root", password="")
    store = save_store(name="matrix-store", kind="qdrant", uri=str(tmp_path / "matrix-store"))
    users = {who: create_user(username=who, password=f"pw-{who}-12345", roles=[ROLE_OF[who]]) for who in USERS}
    grant(source, to=users["operator"], level="manage")
    grant(store, to=users["operator"], level="manage")
    grant(task, to=users["operator"], level="operate")
    for obj in (source, store, task):
        grant(obj, to=users["viewer"], level="view")
    return World(users, {"source": source, "store": store, "task": task}, database, mariadb.port,
                 str(tmp_path))


def outcome(response, ok: int, others: dict[int, str] | None = None) -> str:
    """The outcome an exact status code stands for; any other code fails the test."""
    codes = {ok: "ok", 403: "403", 404: "404", **(others or {})}
    assert response.status_code in codes, (response.status_code, response.content[:500])
    return codes[response.status_code]


def still_there(obj) -> bool:
    return type(obj).objects.filter(pk=obj.pk).exists()


def create_body(kind: str, world: World) -> dict:
    if kind == "source":
        return {"name": "new-source", "kind": "mysql", "host": "127.0.0.1", "port": world.mariadb_port,
                "database": world.database, "user": "root", "password": ""}
    if kind == "store":
        return {"name": "new-store", "kind": "qdrant", "uri": f"{world.folder}/new-store"}
    return {"name": "new-task", "source": world.objects["source"].pk, "store": world.objects["store"].pk,
            "table": "docs", "text_template": "{title}", "collection": "new_task", "mode": "full",
            "batch_size": 64}


CHANGE = {"source": ("host", "localhost"), "store": ("uri", "changed-folder"), "task": ("batch_size", 100)}


def changed(obj, kind: str) -> bool:
    field, value = CHANGE[kind]
    obj = type(obj).objects.filter(pk=obj.pk).first()
    return obj is not None and getattr(obj, field) == value


# -- REST API ---------------------------------------------------------------------------------

API_PATH = {"source": "sources", "store": "stores", "task": "tasks"}


def probe_api(action: str, kind: str, world: World, who: str) -> str:
    client = APIClient()
    client.force_authenticate(world.users[who])
    obj = world.objects[kind]
    listing = f"/api/{API_PATH[kind]}/"
    url = f"{listing}{obj.pk}/"
    if action == "create":
        response = client.post(listing, create_body(kind, world), format="json")
        result = outcome(response, 201, {400: "pick"} if kind == "task" else None)
        assert (result == "ok") == MODELS[kind].objects.filter(name=f"new-{kind}").exists()
        return result
    if action == "view":
        result = outcome(client.get(url), 200)
        listed = obj.pk in [item["id"] for item in client.get(listing).json()["results"]]
        assert listed == (result == "ok"), "the list and the detail disagree"
        return result
    if action == "change":
        field, value = CHANGE[kind]
        result = outcome(client.patch(url, {field: value}, format="json"), 200)
        assert changed(obj, kind) == (result == "ok")
        return result
    if action == "delete":
        result = outcome(client.delete(url), 204)
        assert still_there(obj) == (result != "ok")
        return result
    if action == "start":
        return outcome(client.post(url + "start/"), 202)
    if action == "stop":
        return outcome(client.post(url + "stop/"), 200)
    raise AssertionError(action)


# -- console pages ----------------------------------------------------------------------------


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def probe_console(action: str, kind: str, world: World, who: str) -> str:
    client = logged_in(world.users[who])
    obj = world.objects[kind]
    if action == "create":
        data = create_body(kind, world)
        if kind == "task":
            data["embedding_model"] = SyncTask._meta.get_field("embedding_model").default
        response = client.post(reverse(f"console:{kind}-create"), data)
        # A form refused as invalid is shown again (200) with its errors.
        result = outcome(response, 302, {200: "pick"} if kind == "task" else None)
        if result == "pick":
            assert "Select a valid choice" in response.content.decode()
        assert (result == "ok") == MODELS[kind].objects.filter(name=f"new-{kind}").exists()
        return result
    if action == "view":
        if kind == "task":
            result = outcome(client.get(reverse("console:task-detail", args=[obj.pk])), 200)
        else:  # sources and stores have no page of their own: "test connection" is what viewing allows
            result = outcome(client.post(reverse(f"console:{kind}-test", args=[obj.pk])), 200)
        listed = f">{obj.name}<" in client.get(reverse(f"console:{kind}-list")).content.decode()
        assert listed == (result == "ok"), "the list and the object disagree"
        return result
    if action == "change":
        # What the form shows someone who may edit it, posted by `who`.
        shown = logged_in(world.users["super"]).get(reverse(f"console:{kind}-edit", args=[obj.pk]))
        field, value = CHANGE[kind]
        response = client.post(reverse(f"console:{kind}-edit", args=[obj.pk]),
                               form_data(shown.context["form"], **{field: value}))
        result = outcome(response, 302)
        assert changed(obj, kind) == (result == "ok")
        return result
    if action == "delete":
        result = outcome(client.post(reverse(f"console:{kind}-delete", args=[obj.pk])), 302)
        assert still_there(obj) == (result != "ok")
        return result
    if action in ("start", "stop"):
        result = outcome(client.post(reverse(f"console:task-{action}", args=[obj.pk])), 302)
        state = SyncTask.objects.get(pk=obj.pk).desired_state
        if result == "ok":
            assert state == ("running" if action == "start" else "stopped")
        return result
    raise AssertionError(action)


# -- Django admin -----------------------------------------------------------------------------

ADMIN_PATH = {"source": "datasources/datasource", "store": "datasources/vectorstore", "task": "tasks/synctask"}


def probe_admin(action: str, kind: str, world: World, who: str) -> str:
    user = world.users[who]
    # Operators and Viewers are not staff by default (see test_staff_status_follows_the_administrator_roles);
    # let them in, to check that admin shows and changes exactly what the other surfaces do.
    User.objects.filter(pk=user.pk).update(is_staff=True)
    client = logged_in(user)
    obj = world.objects[kind]
    base = f"/admin/{ADMIN_PATH[kind]}/"
    shown_to_super = logged_in(world.users["super"])
    if action == "create":
        body = create_body(kind, world)
        add_form = shown_to_super.get(base + "add/")
        response = client.post(base + "add/", admin_form_data(add_form, **body))
        result = outcome(response, 302, {200: "pick"} if kind == "task" else None)
        if result == "pick":
            assert "Select a valid choice" in response.content.decode()
        assert (result == "ok") == MODELS[kind].objects.filter(name=f"new-{kind}").exists()
        return result
    if action == "view":
        result = outcome(client.get(f"{base}{obj.pk}/change/"), 200)
        listed = f">{obj.name}<" in client.get(base).content.decode()
        assert listed == (result == "ok"), "the list and the object disagree"
        return result
    if action == "change":
        field, value = CHANGE[kind]
        change_form = shown_to_super.get(f"{base}{obj.pk}/change/")
        response = client.post(f"{base}{obj.pk}/change/", admin_form_data(change_form, **{field: value}))
        result = outcome(response, 302)
        assert changed(obj, kind) == (result == "ok")
        return result
    if action == "delete":
        result = outcome(client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}), 302)
        assert still_there(obj) == (result != "ok")
        return result
    if action in ("start", "stop"):
        # Admin actions work on a selection and always answer with the list again (302): the
        # outcome is in what happened and what the list says. "403": the task was refused with a
        # message; "404": it is not in the user's queryset at all, so nothing is said about it.
        before = SyncTask.objects.get(pk=obj.pk).desired_state
        response = client.post(base, {"action": action, "_selected_action": [obj.pk]})
        assert response.status_code == 302, response.status_code
        said = [str(m) for m in response.wsgi_request._messages]
        after = SyncTask.objects.get(pk=obj.pk).desired_state
        done = f"{obj.name}: {'started.' if action == 'start' else 'asked to stop.'}"
        if said == [done]:
            assert after == ("running" if action == "start" else "stopped")
            return "ok"
        assert after == before, "the state changed without saying so"
        if said == [f"{obj.name}: you may not start or stop this task."]:
            return "403"
        assert not any(obj.name in message for message in said), said
        return "404"
    raise AssertionError(action)


PROBES = {"api": probe_api, "console": probe_console, "admin": probe_admin}


@pytest.mark.parametrize("who", USERS)
@pytest.mark.parametrize("kind", ["source", "store", "task"])
@pytest.mark.parametrize("surface", list(PROBES))
def test_permission_matrix(world, surface, kind, who):
    """Every action in order (create, view, change, start, stop, delete), as `who`."""
    probe = PROBES[surface]
    observed = {action: probe(action, kind, world, who) for action in ACTIONS[kind]}
    expected = {action: EXPECTED[(kind, action)][who] for action in ACTIONS[kind]}
    assert observed == expected


# -- websocket ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the consumer reads the database from another thread
@pytest.mark.parametrize("who", USERS)
def test_websocket_matrix(world, who):
    """Viewing a task's live progress: the socket opens (ok) or closes with 4404 (404)."""
    task = world.objects["task"]
    client = logged_in(world.users[who])
    outcome = websocket_outcome(task.pk, client.cookies["sessionid"].value)
    observed = {"open": "ok", 4404: "404", 4403: "403"}.get(outcome, f"closed {outcome}")
    assert observed == EXPECTED[("task", "view")][who]


# -- Django admin: records of a task, staff status ------------------------------------------------


@pytest.mark.parametrize("who", USERS)
def test_runs_and_dead_letters_are_seen_only_through_their_task(world, make_task, who):
    """Dead letters hold row data: in admin they are visible exactly when their task is."""
    task = world.objects["task"]
    hidden_task = make_task(0, table="others")  # granted to nobody
    SyncRun.objects.create(task=hidden_task, status=SyncRun.Status.SUCCEEDED)
    hidden_task.dead_letters.create(key=[2], row={}, error="hidden")
    run = SyncRun.objects.create(task=task, status=SyncRun.Status.FAILED, error="boom")
    letter = task.dead_letters.create(run=run, key=[1], row={"title": "row-secret-title"}, error="too long")
    user = world.users[who]
    User.objects.filter(pk=user.pk).update(is_staff=True)
    client = logged_in(user)
    visible = EXPECTED[("task", "view")][who] == "ok"
    expected = 200 if visible else 404
    assert client.get(f"/admin/tasks/syncrun/{run.pk}/change/").status_code == expected
    assert client.get(f"/admin/tasks/deadletter/{letter.pk}/change/").status_code == expected
    for path, record in (("deadletter", letter), ("syncrun", run)):
        listing = client.get(f"/admin/tasks/{path}/")
        assert listing.status_code == 200
        body = listing.content.decode()
        assert (f"/admin/tasks/{path}/{record.pk}/" in body) == visible
        # The task filter offers only tasks the user may see: not the one only Admins see.
        assert (hidden_task.name in body) == (who in ("super", "admin"))
    # Records are read-only: not even the Super admin changes or deletes them here.
    assert client.post(f"/admin/tasks/deadletter/{letter.pk}/delete/", {"post": "yes"}).status_code == (
        403 if visible else 404)
    assert task.dead_letters.filter(pk=letter.pk).exists()


def test_staff_status_follows_the_administrator_roles(world):
    """Admins and Super admins get staff status with their role; Operators and Viewers do not, and
    Django admin sends them to its sign-in page."""
    users = world.users
    assert {who for who, user in users.items() if user.is_staff} == {"super", "admin"}
    for who in ("operator", "viewer"):
        response = logged_in(users[who]).get("/admin/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert logged_in(users["admin"]).get("/admin/").status_code == 200


# -- the rest of the door: anonymous and disabled users, tokens, creators, throttling ------------------


def test_anonymous_and_disabled_users_get_nothing(world):
    task = world.objects["task"]
    assert APIClient().get(f"/api/tasks/{task.pk}/").status_code == 401
    assert Client().get(reverse("console:task-detail", args=[task.pk])).status_code == 302  # to sign in
    viewer = world.users["viewer"]
    key = issue_token(viewer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(f"/api/tasks/{task.pk}/").status_code == 200
    set_active(viewer, False)
    response = client.get(f"/api/tasks/{task.pk}/")
    assert response.status_code == 401 and response.json() == {"detail": "User inactive or deleted."}
    assert not Client().login(username="viewer", password="pw-viewer-12345")


def test_an_operator_manages_what_they_create_and_nothing_else(world):
    users = world.users
    carol = APIClient()
    carol.force_authenticate(users["operator_nogrant"])
    created = carol.post("/api/sources/", create_body("source", world), format="json")
    assert created.status_code == 201, created.content
    source_id = created.json()["id"]
    assert carol.patch(f"/api/sources/{source_id}/", {"port": world.mariadb_port}, format="json").status_code == 200
    assert carol.delete(f"/api/sources/{source_id}/").status_code == 204
    created = carol.post("/api/sources/", create_body("source", world), format="json")
    source_id = created.json()["id"]
    for who, expected in (("viewer", 404), ("operator", 404), ("admin", 200), ("super", 200)):
        client = APIClient()
        client.force_authenticate(users[who])
        assert client.get(f"/api/sources/{source_id}/").status_code == expected, who


def test_api_tokens_work_and_are_revocable(world):
    task = world.objects["task"]
    key = issue_token(world.users["viewer"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(f"/api/tasks/{task.pk}/").status_code == 200
    revoke_token(world.users["viewer"])
    assert client.get(f"/api/tasks/{task.pk}/").status_code == 401


@pytest.fixture
def forget_failed_sign_ins():
    """The counts live in the session's shared Redis: leave no user locked out for later tests."""
    yield
    from tasks.locks import redis_client

    client = redis_client()
    for key in client.scan_iter("rsync:login-fail:*"):
        client.delete(key)


def test_sign_in_is_throttled_after_repeated_failures(world, client, settings, forget_failed_sign_ins):
    settings.RSYNC_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        response = client.post("/login/", {"username": "viewer", "password": "guess"})
        assert response.status_code == 200 and "Too many" not in response.content.decode()
    response = client.post("/login/", {"username": "viewer", "password": "pw-viewer-12345"})
    assert "Too many failed sign-ins" in response.content.decode(), "the right password is refused while locked"
    token = APIClient().post("/api/auth/token/", {"username": "viewer", "password": "pw-viewer-12345"},
                             format="json")
    assert token.status_code == 429 and "Retry-After" in token.headers
    other = client.post("/login/", {"username": "admin", "password": "pw-admin-12345"})
    assert other.status_code == 302, "another user is not locked out"
