"""Text longer than the model takes is never cut silently: the preview says so row by row, and a run
says so in its notices (the model embeds only the beginning of such text; chunking embeds it all)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from rsync_admin.corpus import insert_rows, rows
from tasks.models import SyncRun
from tasks.services import save_task

from .helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "Parse the command line and return the options that were given. " * 60  # ~700 tokens


@pytest.fixture
def api():
    client = APIClient()
    client.force_login(get_user_model().objects.create_superuser("root", password="root-pw-1234"))
    return client


def test_preview_and_run_say_when_text_is_longer_than_the_model_takes(make_task, source_db, api, run_in_thread):
    _, conn = source_db
    task = make_task(0, mode="full", template="{title}\n\n{body}")
    long_rows, short_rows = rows(2, start_id=1), rows(3, start_id=3)
    for row in long_rows:
        row["body"] = LONG
    for row in short_rows:
        row["body"] = "Short."
    insert_rows(conn, "docs", long_rows + short_rows)

    preview = api.get(f"/api/tasks/{task.pk}/preview/").json()
    notices = {item["key"][0]: item["notice"] for item in preview}
    assert "tokens: the model embeds only the first 256" in notices[1] and notices[1] == notices[2]
    assert notices[3] == notices[4] == notices[5] == ""

    # With chunking, the preview says in how many pieces the text is stored instead.
    chunked = save_task(name=task.name + "-chunked", source=task.source, store=task.store, table="docs",
                        text_template="{body}", chunk_size=100, collection=task.collection + "_chunked")
    notices = {item["key"][0]: item["notice"] for item in api.get(f"/api/tasks/{chunked.pk}/preview/").json()}
    assert "chunks of up to 100 tokens" in notices[1] and notices[3] == ""

    run_in_thread(task)
    run = wait_until(lambda: SyncRun.objects.filter(task=task, status="succeeded").first(), timeout=300,
                     message="the snapshot run to finish")
    assert run.rows_upserted == 5
    assert any("Row [1] has more text than the model takes (256 tokens)" in n for n in run.notices), run.notices
    assert any(n.startswith("In all, 2 rows had more text") for n in run.notices), run.notices
