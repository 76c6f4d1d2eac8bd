"""The verbs that change sync tasks: save, start, stop, re-snapshot, replay or discard dead letters."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.services import grant_creator
from audit import services as audit
from datasources.connectors import source_connector
from datasources.connectors.polling import task_source_connector
from datasources.models import DataSource, VectorStore
from datasources.services import check_source

from .models import Checkpoint, DeadLetter, SyncRun, SyncTask
from .validation import TaskCheck, TaskInvalid, default_collection, validate_task

TASK_FIELDS = (
    "table", "text_template", "payload_columns", "embedding_model", "collection", "mode", "batch_size",
    "capture", "updated_at_column", "soft_delete_column", "poll_interval", "overlap_seconds",
    "chunk_size", "chunk_overlap", "vectorizer", "index_type", "metric", "hnsw_m", "hnsw_ef_construction",
    "ivf_nlist", "row_filter",
)
AUDITED_TASK_FIELDS = ("name", "source", "store", *TASK_FIELDS)


class TaskNotReady(Exception):
    """The task's checks failed; the message lists every failure."""


class TaskRunning(Exception):
    """The task is running (or about to): stop it and wait for its run to end first."""


def required_columns(task: SyncTask) -> dict[str, list[str]]:
    return {"text template": task.template_columns, "payload": list(task.payload_columns)}


def source_check_failures(task: SyncTask, source=None) -> list[str]:
    """Every reason the task cannot run now (empty when it can)."""
    if source is None and task.capture == SyncTask.Capture.POLL:
        source = task_source_connector(task)
    if source is None:
        results = check_source(
            task.source, table=task.table, required_columns=required_columns(task), task_id=task.pk
        )
    else:
        results = source.check(table=task.table, required_columns=required_columns(task), task_id=task.pk)
    return [r.message for r in results if not r.ok]


def check_task(task: SyncTask) -> TaskCheck:
    """Every rule of `tasks.validation` plus the model's own field checks, errors merged by field.

    A field the model already rejects (wrong type, out of range) gets only the model's message.
    """
    check = validate_task(task)
    try:
        task.full_clean()
    except ValidationError as exc:
        model_errors = exc.message_dict
        check.errors = {**{k: v for k, v in check.errors.items() if k not in model_errors}, **model_errors}
    return check


@transaction.atomic
def save_task(*, name: str, source: DataSource, store: VectorStore, **fields) -> SyncTask:
    """Create or update a task by name; the primary key is read from the source catalog.

    Raises TaskInvalid ({field: [messages]}) when the task breaks a rule of `tasks.validation`
    or of the model. A source that cannot be reached does not stop the save (start checks
    again); the saved task's `save_warnings` lists that, and anything else worth telling the
    person who saved it.
    """
    unknown = set(fields) - set(TASK_FIELDS)
    if unknown:
        raise ValueError(f"unknown task fields: {', '.join(sorted(unknown))}")
    task = SyncTask.objects.filter(name=name).first() or SyncTask(name=name)
    before = audit.snapshot(task, AUDITED_TASK_FIELDS) if task.pk else None
    task.source, task.store = source, store
    for key, value in fields.items():
        setattr(task, key, value)
    if not task.collection:
        task.collection = default_collection(name)
    check = check_task(task)
    if check.errors:
        raise TaskInvalid(check.errors)
    if check.table is not None:  # else the source is down: keep what we knew; start_task checks again
        task.primary_key = check.table.primary_key
    task.save()
    task.save_warnings = check.warnings
    Checkpoint.objects.get_or_create(task=task)
    diff = audit.model_diff(before, audit.snapshot(task, AUDITED_TASK_FIELDS))
    if before is None or diff:
        audit.record(action="create" if before is None else "update", obj=task, diff=diff)
    if before is None:
        grant_creator(task)
    return task


def start_task(task: SyncTask, *, enqueue: bool = True) -> SyncRun:
    """Check the task, mark it running and hand it to a worker.

    A double start is harmless: the conditional update lets one caller create the run.
    """
    # The task's own rules first (it may have been saved before a rule existed, or the table
    # changed since); then the source's checks: it answers, the table has a primary key, the
    # change log is set up.
    check = validate_task(task)
    failures = check.messages() or source_check_failures(task)
    if failures:
        raise TaskNotReady(" ".join(failures))
    with transaction.atomic():
        SyncTask.objects.select_for_update().filter(pk=task.pk).first()  # serialises concurrent starts
        SyncTask.objects.filter(pk=task.pk).update(desired_state=SyncTask.DesiredState.RUNNING)
        active = task.runs.filter(status__in=SyncRun.ACTIVE).first()
        if active is not None:
            return active
        run = SyncRun.objects.create(task=task, status=SyncRun.Status.QUEUED)
        audit.record(action="start", obj=task, diff={"run": run.pk})
        if enqueue:
            from .jobs import run_sync_task

            transaction.on_commit(lambda: run_sync_task.delay(task.pk, run.pk))
    return run


@transaction.atomic
def stop_task(task: SyncTask) -> None:
    """Ask the runner to stop: it finishes its batch, commits its checkpoint and exits."""
    SyncTask.objects.filter(pk=task.pk).update(desired_state=SyncTask.DesiredState.STOPPED)
    task.runs.filter(status=SyncRun.Status.QUEUED).update(status=SyncRun.Status.STOPPED)
    audit.record(action="stop", obj=task)


@transaction.atomic
def delete_task(task: SyncTask) -> None:
    """Delete a stopped task with its runs, checkpoint and dead letters; its collection stays in the store.

    A task that should run, or whose runner still holds its lock, is refused (deleting it under the
    runner would lose its last batch): stop it first. A run left "running" by a runner that died
    (its lock expired) does not block the delete.

    A PostgreSQL task's replication slot and publication are dropped too: a slot nobody reads
    keeps WAL on the server forever. If the server cannot be reached, the delete is refused with a
    ConnectorError that says how to drop them by hand.
    """
    from .locks import RunnerLock

    task = SyncTask.objects.select_for_update().get(pk=task.pk)
    running = task.desired_state == SyncTask.DesiredState.RUNNING or (
        task.runs.filter(status__in=SyncRun.ACTIVE).exists() and RunnerLock(task.pk).holder() is not None
    )
    if running:
        raise TaskRunning(f"Task {task.name!r} is running: stop it first and delete it once its run has ended.")
    audit.record(action="delete", obj=task, diff=audit.model_diff(audit.snapshot(task, AUDITED_TASK_FIELDS), None))
    task_id = task.pk  # delete() clears it
    task.delete()
    if task.source.kind == DataSource.Kind.POSTGRESQL:
        # Last, so that a failure rolls the delete back and the task keeps pointing at its slot.
        source_connector(task.source).drop_replication(task_id)


def mark_running(task: SyncTask) -> None:
    """For a runner started by hand (`manage.py run_task`)."""
    SyncTask.objects.filter(pk=task.pk).update(desired_state=SyncTask.DesiredState.RUNNING)


@transaction.atomic
def resnapshot_task(task: SyncTask) -> None:
    """Read the whole table again on the next run (unchanged rows are not embedded again)."""
    Checkpoint.objects.update_or_create(
        task=task,
        defaults={"snapshot_state": Checkpoint.SnapshotState.PENDING, "snapshot_last_key": None, "snapshot_rows": 0},
    )
    audit.record(action="resnapshot", obj=task)


def _dead_letters(task: SyncTask, letter_ids: list[int] | None):
    letters = DeadLetter.objects.filter(task=task)
    return letters if letter_ids is None else letters.filter(pk__in=letter_ids)


@transaction.atomic
def replay_dead_letters(task: SyncTask, *, letter_ids: list[int] | None = None) -> int:
    """Ask the runner to try these rows again (all of the task's when `letter_ids` is None).

    The runner reads each row as it is now in the source, so a replay never writes stale data;
    a row that no longer exists is removed from the collection. A task that is not running
    replays when it next runs. Returns how many letters were marked.
    """
    count = _dead_letters(task, letter_ids).update(replay_requested_at=timezone.now())
    if count:
        audit.record(action="replay_dead_letters", obj=task, diff={"letters": count})
    return count


@transaction.atomic
def discard_dead_letters(task: SyncTask, *, letter_ids: list[int] | None = None) -> int:
    """Forget these rows' failures (all of the task's when `letter_ids` is None); returns how many."""
    count, _ = _dead_letters(task, letter_ids).delete()
    if count:
        audit.record(action="discard_dead_letters", obj=task, diff={"letters": count})
    return count
