"""Django admin masks secrets; the websocket pushes task events in seq order to signed-in users."""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from rsync_admin.asgi import application
from tasks import events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_user():
    return User.objects.create_superuser("root", "root@example.com", "a-long-admin-password")


def test_admin_pages_never_show_secrets(client, admin_user, make_task):
    task = make_task(3)
    source = task.source
    source.password = "s3cret-Passw0rd"
    source.save()
    client.force_login(admin_user)
    for url in [
        "/admin/datasources/datasource/", f"/admin/datasources/datasource/{source.pk}/change/",
        "/admin/datasources/vectorstore/", f"/admin/datasources/vectorstore/{task.store.pk}/change/",
        "/admin/tasks/synctask/", f"/admin/tasks/synctask/{task.pk}/change/", "/admin/tasks/syncrun/",
        "/admin/tasks/deadletter/",
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert "s3cret-Passw0rd" not in body and "enc:v1:" not in body, url
    assert "A value is set" in client.get(f"/admin/datasources/datasource/{source.pk}/change/").content.decode()


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


def test_websocket_rejects_anonymous_users(make_task):
    task = make_task(1)

    async def attempt():
        communicator = WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/",
                                             headers=[(b"origin", b"http://localhost")])
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    connected, code = asyncio.run(attempt())
    assert not connected and code == 4401


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
