"""Dead letters: a row the pipeline cannot write is kept with its error, shown on the task page and
in the API, pushed to the live panel, and can be replayed once the cause is fixed (the runner reads
the row again from the source, so a replay never writes stale data) or discarded."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts.roles import ADMIN, sync_role_groups
from accounts.services import grant
from audit.models import AuditEvent
from datasources.connectors.milvus import TEXT_FIELD, VARCHAR_MAX
from rsync_admin.corpus import insert_rows, rows
from tasks.events import events_after
from tasks.models import Checkpoint, DeadLetter
from tasks.services import save_task, stop_task

from .helpers import target_rows, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG_BODY = "A body longer than the store keeps. " * (VARCHAR_MAX // 30)


@pytest.fixture
def admin_client():
    sync_role_groups()
    user = get_user_model().objects.create_user("dora", password="dora-pw-1234")
    user.groups.add(Group.objects.get(name=ADMIN))
    client = APIClient()
    client.force_login(user)
    return client


def letters_of(task) -> dict:
    return {tuple(letter.key): letter for letter in DeadLetter.objects.filter(task=task)}


def test_rejected_rows_are_kept_shown_and_replayed_from_the_source(make_task, source_db, run_in_thread,
                                                                   admin_client, client):
    _, conn = source_db
    # `body` as a payload column: a body longer than the store's text field cannot be written.
    task = make_task(20, template="{title}", payload=["name", "body"])
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE docs MODIFY body MEDIUMTEXT NOT NULL")
    runner = run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=300, message="snapshot")

    long_rows = rows(3, start_id=5000)
    for row in long_rows:
        row["body"] = LONG_BODY
    insert_rows(conn, "docs", long_rows)
    wait_until(lambda: len(letters_of(task)) == 3, timeout=120, message="three dead letters")
    letters = letters_of(task)
    assert set(letters) == {(5000,), (5001,), (5002,)}
    assert all(f"holds {len(LONG_BODY)} characters" in letter.error for letter in letters.values())
    assert not {5000, 5001, 5002} & set(target_rows(task)), "a rejected row must not be half-written"
    # The live panel heard about it as an error, with the key and the reason.
    pushed = [e for e in events_after(task.pk, 0) if e.get("type") == "notice" and e.get("level") == "error"]
    assert pushed and "went to the dead letters" in pushed[-1]["message"] and "characters" in pushed[-1]["message"]

    # The task page lists them with their errors; the API too.
    client.force_login(get_user_model().objects.get(username="dora"))
    page = client.get(f"/tasks/{task.pk}/").content.decode()
    assert 'id="dead-letter-table"' in page and "5001" in page and f"holds {len(LONG_BODY)} characters" in page
    listed = admin_client.get(f"/api/tasks/{task.pk}/dead-letters/").json()
    assert listed["count"] == 3 and {tuple(item["key"]) for item in listed["results"]} == set(letters)

    # Meanwhile one row is fixed at the source and one deleted; then the task is fixed (no body
    # in the payload) and every letter replayed.
    stop_task(task)
    runner.stop()
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET title = 'Fixed at the source', body = 'short' WHERE id = 5001")
        cur.execute("DELETE FROM docs WHERE id = 5002")
    task = save_task(name=task.name, source=task.source, store=task.store, payload_columns=["name"])
    bad = admin_client.post(f"/api/tasks/{task.pk}/dead-letters/replay/", {"ids": ["x"]}, format="json")
    assert bad.status_code == 400 and "ids" in bad.json()
    response = admin_client.post(f"/api/tasks/{task.pk}/dead-letters/replay/", {}, format="json")
    assert response.status_code == 202 and response.json()["count"] == 3
    assert "when the task next runs" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="replay_dead_letters", object_id=str(task.pk)).count() == 1

    run_in_thread(task)
    wait_until(lambda: not letters_of(task), timeout=120, message="the replayed letters to go")
    points = target_rows(task)
    assert 5000 in points and points[5000]["name"] == long_rows[0]["name"]
    # Replayed after the stream applied the fix: written as the source has it now, not as the
    # letter kept it (that would put the old title back).
    assert points[5001][TEXT_FIELD] == "Fixed at the source"
    assert 5002 not in points  # deleted at the source since: the replay does not bring it back


def test_discard_from_the_console_needs_the_run_right(make_task, client):
    task = make_task(0)
    DeadLetter.objects.create(task=task, key=[1], row={"id": 1}, error="the model rejected the text")
    DeadLetter.objects.create(task=task, key=[2], row={"id": 2}, error="the model rejected the text")
    sync_role_groups()
    viewer = get_user_model().objects.create_user("vic", password="vic-pw-1234")
    grant(task, to=viewer, level="view")
    client.force_login(viewer)
    page = client.get(f"/tasks/{task.pk}/").content.decode()
    assert "the model rejected the text" in page and "dead-letters-discard-all" not in page
    assert client.post(f"/tasks/{task.pk}/dead-letters/discard/").status_code == 403
    assert DeadLetter.objects.filter(task=task).count() == 2

    admin = get_user_model().objects.create_user("ada", password="ada-pw-1234")
    admin.groups.add(Group.objects.get(name=ADMIN))
    client.force_login(admin)
    one = DeadLetter.objects.get(task=task, key=[1])
    response = client.post(f"/tasks/{task.pk}/dead-letters/discard/", {"letter": one.pk})
    assert response.status_code == 302
    assert list(DeadLetter.objects.filter(task=task).values_list("key", flat=True)) == [[2]]
    assert AuditEvent.objects.filter(action="discard_dead_letters", object_id=str(task.pk)).count() == 1
