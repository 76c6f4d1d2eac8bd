"""Reads of tasks and runs. Every page, API view and the websocket go through these."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet

from accounts.permissions import restrict
from datasources.connectors import source_connector
from datasources.connectors.base import ConnectorError

from .models import DeadLetter, SyncRun, SyncTask


def tasks_for(user, action: str = "view") -> QuerySet[SyncTask]:
    """The tasks `user` may see (or change, delete, run: `action`)."""
    return restrict(SyncTask.objects.select_related("source", "store"), user, action)


def can_view_task(user, task_id: int) -> bool:
    return tasks_for(user).filter(pk=task_id).exists()


def runs_for(user) -> QuerySet[SyncRun]:
    return SyncRun.objects.filter(task__in=tasks_for(user)).select_related("task")


def dead_letters_of(task: SyncTask) -> QuerySet[DeadLetter]:
    """A task's dead letters, newest first (the caller has checked the task may be viewed)."""
    return task.dead_letters.order_by("-created_at", "-id")


def dead_letters_for(user) -> QuerySet[DeadLetter]:
    """Dead letters hold row data: a user sees those of the tasks they may see, no others."""
    return DeadLetter.objects.filter(task__in=tasks_for(user)).select_related("task")


def latest_run(task: SyncTask) -> SyncRun | None:
    return task.runs.order_by("-created_at", "-id").first()


def replication_slot_status(task: SyncTask) -> dict | None:
    """The replication slot of a PostgreSQL task as the server sees it (None for other sources).

    `retained_bytes` is WAL the server keeps for the slot (it cannot recycle it until the task
    reads on or is deleted); `warn` is set above RSYNC_WAL_WARN_BYTES, or when the server says the
    slot is about to lose (or lost) WAL. An unreachable server gives `error`.
    """
    if task.source.kind != "postgresql":
        return None
    try:
        slot = source_connector(task.source).slot_status(task.pk)
    except ConnectorError as exc:
        return {"exists": None, "error": str(exc)}
    if slot is None:
        return {"exists": False, "slot": None, "active": False, "retained_bytes": 0, "warn": False}
    retained = slot.retained_bytes or 0
    return {
        "exists": True, "slot": slot.name, "active": slot.active, "retained_bytes": retained,
        "wal_status": slot.wal_status, "confirmed_flush_lsn": slot.confirmed_flush_lsn,
        "safe_wal_size": slot.safe_wal_size,
        "warn": retained > settings.RSYNC_WAL_WARN_BYTES or slot.wal_status in ("unreserved", "lost"),
    }
