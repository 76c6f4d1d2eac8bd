"""The permission matrix: roles and object grants x actions, on the API, the websocket and admin.

alice is an Operator granted "operate" on the task, bob a Viewer granted "view", carol an Operator
with no grant, dora an Admin. Without view right an object does not exist (404); with view but not
the right to act, acting is forbidden (403).
"""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from accounts.roles import ADMIN, OPERATOR, VIEWER, sync_role_groups
from accounts.services import create_user, grant, issue_token, revoke_token, set_active
from audit.context import AuditContext, activate, deactivate
from datasources.models import DataSource
from rsync_admin.asgi import application
from tasks.models import SyncTask

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people(make_task):
    sync_role_groups()  # transactional tests empty the role groups the migration made
    task = make_task(2)
    users = {
        "alice": create_user(username="alice", password="pw-alice-123", roles=[OPERATOR]),
        "bob": create_user(username="bob", password="pw-bob-123", roles=[VIEWER]),
        "carol": create_user(username="carol", password="pw-carol-123", roles=[OPERATOR]),
        "dora": create_user(username="dora", password="pw-dora-123", roles=[ADMIN]),
    }
    grant(task, to=users["alice"], level="operate")
    grant(task, to=users["bob"], level="view")
    return task, users


def api(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


EXPECTED = {  # who: (GET task, PATCH task, POST stop, DELETE task, in the list)
    "dora": (200, 200, 200, None, True),
    "alice": (200, 403, 200, 403, True),
    "bob": (200, 403, 403, 403, True),
    "carol": (404, 404, 404, 404, False),
}


@pytest.mark.parametrize("who", list(EXPECTED))
def test_api_matrix(people, who):
    task, users = people
    client = api(users[who])
    get, patch, stop, delete, listed = EXPECTED[who]
    url = f"/api/tasks/{task.pk}/"
    assert client.get(url).status_code == get
    assert client.patch(url, {"batch_size": 100}, format="json").status_code == patch
    assert client.post(url + "stop/").status_code == stop
    if delete is not None:
        assert client.delete(url).status_code == delete
    ids = [t["id"] for t in client.get("/api/tasks/").json()["results"]]
    assert (task.pk in ids) == listed
    assert client.get(f"/api/sources/{task.source_id}/").status_code == (200 if who == "dora" else 404)


def test_anonymous_and_disabled_users_get_nothing(people):
    task, users = people
    assert api(None).get(f"/api/tasks/{task.pk}/").status_code == 401
    set_active(users["alice"], False)
    users["alice"].refresh_from_db()
    assert api(users["alice"]).get(f"/api/tasks/{task.pk}/").status_code in (401, 403)


def test_an_operator_manages_what_they_create_and_nothing_else(people, mariadb, source_db):
    _, users = people
    database, _ = source_db
    carol = APIClient()
    carol.force_authenticate(users["carol"])
    token = activate(AuditContext(actor=users["carol"]))
    try:
        created = carol.post("/api/sources/", {
            "name": "carols-db", "kind": "mysql", "host": "127.0.0.1", "port": mariadb.port,
            "database": database, "user": "root", "password": "",
        }, format="json")
    finally:
        deactivate(token)
    assert created.status_code == 201, created.content
    source_id = created.json()["id"]
    assert carol.patch(f"/api/sources/{source_id}/", {"port": mariadb.port}, format="json").status_code == 200
    assert api(users["bob"]).get(f"/api/sources/{source_id}/").status_code == 404
    assert api(users["dora"]).get(f"/api/sources/{source_id}/").status_code == 200
    viewer = APIClient()
    viewer.force_authenticate(users["bob"])
    assert viewer.post("/api/sources/", {"name": "x"}, format="json").status_code == 403
    assert DataSource.objects.filter(name="x").count() == 0


def test_api_tokens_work_and_are_revocable(people):
    task, users = people
    key = issue_token(users["bob"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(f"/api/tasks/{task.pk}/").status_code == 200
    revoke_token(users["bob"])
    assert client.get(f"/api/tasks/{task.pk}/").status_code == 401


def _websocket(client_cookie: str | None, task_id: int):
    async def attempt():
        headers = [(b"origin", b"http://localhost")]
        if client_cookie:
            headers.append((b"cookie", f"sessionid={client_cookie}".encode()))
        communicator = WebsocketCommunicator(application, f"/ws/tasks/{task_id}/", headers=headers)
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    return asyncio.run(attempt())


@pytest.mark.parametrize("who,allowed", [("bob", True), ("alice", True), ("carol", False), ("dora", True)])
def test_websocket_matrix(people, client, who, allowed):
    task, users = people
    client.force_login(users[who])
    connected, code = _websocket(client.cookies["sessionid"].value, task.pk)
    assert connected == allowed
    if not allowed:
        assert code == 4404


def test_admin_matrix(people, client):
    task, users = people
    for name in ("alice", "carol"):
        users[name].is_staff = True
        users[name].save()
    client.force_login(users["alice"])
    assert client.get(f"/admin/tasks/synctask/{task.pk}/change/").status_code == 200  # view only
    assert client.post(f"/admin/tasks/synctask/{task.pk}/delete/", {"post": "yes"}).status_code == 403
    client.force_login(users["carol"])
    listing = client.get("/admin/tasks/synctask/")
    assert listing.status_code == 200 and task.name not in listing.content.decode()
    assert client.get(f"/admin/tasks/synctask/{task.pk}/change/").status_code in (302, 403, 404)
    assert SyncTask.objects.filter(pk=task.pk).exists()


def test_sign_in_is_throttled_after_repeated_failures(people, client, settings):
    settings.RSYNC_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        response = client.post("/login/", {"username": "bob", "password": "guess"})
        assert response.status_code == 200 and "Too many" not in response.content.decode()
    response = client.post("/login/", {"username": "bob", "password": "pw-bob-123"})
    assert "Too many failed sign-ins" in response.content.decode(), "the right password is refused while locked"
    token = APIClient().post("/api/auth/token/", {"username": "bob", "password": "pw-bob-123"}, format="json")
    assert token.status_code == 429 and "Retry-After" in token.headers
    other = client.post("/login/", {"username": "dora", "password": "pw-dora-123"})
    assert other.status_code == 302, "another user is not locked out"
