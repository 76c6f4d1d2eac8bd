"""Celery jobs: ids in, a service or the runner does the work."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from .locks import RunnerLock
from .models import SyncRun, SyncTask


@shared_task(name="tasks.run_sync_task", ignore_result=True)
def run_sync_task(task_id: int, run_id: int | None = None) -> None:
    from .runner import TaskRunner

    TaskRunner(task_id, run_id=run_id).run()


@shared_task(name="tasks.reconcile_tasks", ignore_result=True)
def reconcile_tasks() -> None:
    """Restart tasks that should run but have no runner (a worker died, a message was lost)."""
    for task in SyncTask.objects.filter(desired_state=SyncTask.DesiredState.RUNNING):
        if RunnerLock(task.pk).holder() is not None:
            continue
        recent = timezone.now() - timedelta(minutes=10)
        if task.runs.filter(status=SyncRun.Status.QUEUED, created_at__gte=recent).exists():
            continue  # still waiting for a free worker
        SyncRun.objects.filter(task=task, status__in=SyncRun.ACTIVE).update(
            status=SyncRun.Status.FAILED, error="The runner went away; a new run took over."
        )
        run = SyncRun.objects.create(task=task, status=SyncRun.Status.QUEUED)
        run_sync_task.delay(task.pk, run.pk)
