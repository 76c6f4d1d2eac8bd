"""Tasks started through the service run on a real Celery worker against the private Redis."""

import os
import signal
import subprocess
import sys

import pytest

from rsync_admin.corpus import insert_rows, rows
from tasks.models import SyncRun, SyncTask
from tasks.services import start_task, stop_task

from .helpers import target_rows, wait_converged, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def celery_worker(subprocess_env, tmp_path):
    log = open(tmp_path / "worker.log", "wb")
    env = dict(subprocess_env, CELERY_BROKER_URL=subprocess_env["REDIS_URL"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "rsync_admin", "worker", "--pool=threads", "--concurrency=2",
         "--loglevel=INFO", "--without-gossip", "--without-mingle", "--hostname", f"test-{os.getpid()}@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_start_and_stop_through_a_worker(make_task, source_db, celery_worker):
    _, conn = source_db
    task = make_task(120, template="{title}")
    run = start_task(task)
    assert run.status == SyncRun.Status.QUEUED
    assert start_task(task).pk == run.pk, "a double start must not create a second run"

    wait_converged(task, conn, timeout=120)
    wait_until(lambda: SyncRun.objects.get(pk=run.pk).phase == "stream", timeout=30)
    insert_rows(conn, "docs", rows(1, start_id=7777))
    wait_until(lambda: 7777 in target_rows(task), timeout=30, message="streamed insert")

    stop_task(task)
    wait_until(lambda: SyncRun.objects.get(pk=run.pk).status == SyncRun.Status.STOPPED, timeout=30)
    finished = SyncRun.objects.get(pk=run.pk)
    assert finished.rows_upserted >= 121 and finished.error == ""
    assert SyncTask.objects.get(pk=task.pk).desired_state == SyncTask.DesiredState.STOPPED


def test_reconcile_restarts_a_task_whose_runner_went_away(make_task, redis_server):
    import redis as redis_lib
    from django.conf import settings

    from tasks.jobs import reconcile_tasks

    task = make_task(1)
    SyncTask.objects.filter(pk=task.pk).update(desired_state=SyncTask.DesiredState.RUNNING)
    orphan = SyncRun.objects.create(task=task, status=SyncRun.Status.RUNNING)  # its worker died
    queue = redis_lib.Redis.from_url(settings.REDIS_URL)
    before = queue.llen("celery")
    reconcile_tasks()
    orphan.refresh_from_db()
    assert orphan.status == SyncRun.Status.FAILED and "went away" in orphan.error
    assert task.runs.filter(status=SyncRun.Status.QUEUED).count() == 1
    assert queue.llen("celery") == before + 1
    reconcile_tasks()  # a queued run still waiting for a worker is left alone
    assert task.runs.filter(status=SyncRun.Status.QUEUED).count() == 1
