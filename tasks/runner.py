"""The sync runner: snapshot then change stream, crash-safe, one per task.

Three stages overlap so the model is never waiting on the databases:

    reader thread  --q-->  main thread: map, render, embed  --q-->  writer thread: store + checkpoint

The writer commits the checkpoint only after the store acknowledged a batch, so a crash anywhere
replays from the last acknowledged batch; writes are idempotent upserts and deletes by key, so a
replay duplicates nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from datasources.connectors import target_connector
from datasources.connectors.base import Change, ConnectorError, Unavailable, normalize_value
from datasources.connectors.polling import task_source_connector
from datasources.embedders import vectorizer_for_task

from .events import EventPublisher
from .locks import RunnerLock
from .models import Checkpoint, DeadLetter, SyncRun, SyncTask
from .pipeline import BatchProcessor, Counters, MappingError, PreparedBatch, TaskMapping
from .progress import ProgressTracker, Publisher

logger = logging.getLogger(__name__)

STOP_POLL_INTERVAL = 0.5
REPLAY_CHECK_INTERVAL = 2.0  # how often a streaming runner looks for dead letters to replay
QUEUE_DEPTH = 3
MAX_BACKOFF = 60.0


class RunFailed(Exception):
    """The run cannot go on until a person changes something; the message says what."""


@dataclass
class WorkItem:
    changes: list[Change]
    commit: dict | None = None  # checkpoint fields to save once this item is in the store
    notices: list[str] = field(default_factory=list)
    heartbeat: bool = False
    replayed: list[int] = field(default_factory=list)  # dead letters this item retries


_END = object()


class _StageError:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item, stopping: Callable[[], bool]) -> bool:
    while True:
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            if stopping():
                return False


class TaskRunner:
    def __init__(
        self, task_id: int, *, run_id: int | None = None, publishers: list[Publisher] | None = None,
        lock_wait: float = 0.0, stop_event: threading.Event | None = None,
    ) -> None:
        self.task_id, self.run_id = task_id, run_id
        self.publishers = publishers or []
        self.lock_wait = lock_wait
        self.stop_event = stop_event or threading.Event()
        self._last_stop_poll = 0.0
        self.lock = None
        self._replays_in_flight: set[int] = set()  # dead letters handed on, not yet committed
        self._truncated_rows = 0  # rows whose text was longer than the model takes, this run

    # -- stopping ----------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        if self.stop_event.is_set():
            return True
        if self.lock is not None and self.lock.lost.is_set():
            return True
        now = time.monotonic()
        if now - self._last_stop_poll >= STOP_POLL_INTERVAL:
            self._last_stop_poll = now
            state = SyncTask.objects.filter(pk=self.task_id).values_list("desired_state", flat=True).first()
            if state != SyncTask.DesiredState.RUNNING:
                self.stop_event.set()
        return self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop_requested():
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> SyncRun | None:
        self.lock = RunnerLock(self.task_id)

        def waiting(holder):
            logger.info("task %s: waiting for the runner lock held by %s", self.task_id, holder)

        if not self.lock.acquire(wait=self.lock_wait, on_wait=waiting):
            holder = self.lock.holder()
            if self.run_id:
                SyncRun.objects.filter(pk=self.run_id, status__in=SyncRun.ACTIVE).update(
                    status=SyncRun.Status.STOPPED, finished_at=timezone.now(),
                    error=f"Another runner is already running this task ({holder}).",
                )
            logger.info("task %s already has a runner (%s)", self.task_id, holder)
            return None
        try:
            return self._run_locked()
        finally:
            self.lock.release()
            close_old_connections()

    def _run_locked(self) -> SyncRun:
        task = SyncTask.objects.select_related("source", "store").get(pk=self.task_id)
        run = self._begin_run(task)
        self.progress = ProgressTracker(
            task_id=task.pk, run_id=run.pk, publishers=[EventPublisher(task.pk), *self.publishers]
        )
        self.counters = Counters()
        self.notices: list[str] = []
        target = None
        try:
            source = task_source_connector(task)
            self._preflight(task, source)
            table = source.describe_table(task.table)
            mapping = TaskMapping.build(task, table)
            embedder = vectorizer_for_task(task)
            self._model_tokens = embedder.max_tokens
            target = target_connector(task.store)
            status = self._loop(task, run, source, mapping, embedder, target)
            self._finish(run, status)
        except (RunFailed, MappingError, ConnectorError) as exc:
            self._finish(run, SyncRun.Status.FAILED, error=str(exc))
        except Exception as exc:  # a bug: keep the run's record honest, log the traceback
            logger.exception("task %s run %s crashed", task.pk, run.pk)
            self._finish(run, SyncRun.Status.FAILED, error=f"Internal error: {type(exc).__name__}: {exc}")
        finally:
            if target is not None:
                target.close()
        run.refresh_from_db()
        return run

    def _begin_run(self, task: SyncTask) -> SyncRun:
        fields = {
            "status": SyncRun.Status.RUNNING, "started_at": timezone.now(),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        if self.run_id:
            SyncRun.objects.filter(pk=self.run_id).update(**fields)
            return SyncRun.objects.get(pk=self.run_id)
        return SyncRun.objects.create(task=task, **fields)

    def _finish(self, run: SyncRun, status: str, error: str = "") -> None:
        if self._truncated_rows > 1:
            self._notice(f"In all, {self._truncated_rows} rows had more text than the model takes and were "
                         "embedded from their beginning only.")
        SyncRun.objects.filter(pk=run.pk).update(
            status=status, finished_at=timezone.now(), error=error, notices=self.notices,
            **self.counters.as_run_fields(),
        )
        if status in (SyncRun.Status.SUCCEEDED, SyncRun.Status.FAILED):
            # A finished or failed run does not restart by itself: a person starts it again.
            SyncTask.objects.filter(pk=run.task_id).update(desired_state=SyncTask.DesiredState.STOPPED)
        self.progress.update(status=status, message=error[:300], force=True)

    def _preflight(self, task: SyncTask, source) -> None:
        from .services import source_check_failures

        failures = source_check_failures(task, source)
        if failures:
            raise RunFailed(" ".join(failures))

    def _loop(self, task, run, source, mapping, embedder, target) -> str:
        backoff = 1.0
        while True:
            try:
                # A vectorizer that learns its size from its first answer (an API with no
                # dimension set) is asked once now: a collection cannot be made without it.
                dimension = embedder.resolve_dimension()
                created = target.ensure_collection(mapping.collection_spec(dimension))
                checkpoint, _ = Checkpoint.objects.get_or_create(task=task)
                if created and checkpoint.snapshot_state != Checkpoint.SnapshotState.PENDING and task.snapshots:
                    self._notice(f"Collection {mapping.collection!r} was missing: taking a new snapshot.")
                    checkpoint = self._reset_snapshot(task)
                if task.snapshots and checkpoint.snapshot_state != Checkpoint.SnapshotState.DONE:
                    assume_empty = created and checkpoint.snapshot_state == Checkpoint.SnapshotState.PENDING
                    if not self._snapshot(task, source, mapping, embedder, target, checkpoint, assume_empty):
                        return SyncRun.Status.STOPPED
                if not task.streams:
                    self._replay(task, source, mapping, embedder, target)
                    return SyncRun.Status.SUCCEEDED
                self._stream(task, source, mapping, embedder, target)
                return SyncRun.Status.STOPPED
            except Unavailable as exc:
                if self.stop_requested():
                    return SyncRun.Status.STOPPED
                delay = min(backoff, MAX_BACKOFF) * random.uniform(0.75, 1.25)
                # A server that said when to come back (Retry-After) is not asked earlier.
                delay = max(delay, getattr(exc, "retry_after", 0.0) or 0.0)
                logger.warning("task %s: %s; retrying in %.1fs", task.pk, exc, delay)
                SyncRun.objects.filter(pk=run.pk).update(error=f"{exc} (retrying)")
                self.progress.update(message=f"{exc} Retrying in {delay:.0f}s.", force=True)
                self._sleep(delay)
                backoff *= 2
                if self.stop_requested():
                    return SyncRun.Status.STOPPED
                SyncRun.objects.filter(pk=run.pk).update(error="")
                self.progress.update(message="")

    def _notice(self, text: str) -> None:
        logger.warning("task %s: %s", self.task_id, text)
        self.notices.append(text)
        self.progress.notice(text)

    def _reset_snapshot(self, task: SyncTask) -> Checkpoint:
        Checkpoint.objects.filter(task=task).update(
            snapshot_state=Checkpoint.SnapshotState.PENDING, snapshot_last_key=None, snapshot_rows=0,
        )
        return Checkpoint.objects.get(task=task)

    # -- snapshot ----------------------------------------------------------------------------

    def _snapshot(self, task, source, mapping, embedder, target, checkpoint, assume_empty) -> bool:
        """Read the table in key order, chunk by chunk; True when it reached the end."""
        conn = source.connect()
        try:
            # A source that keeps state on the server for the stream that follows (a PostgreSQL
            # slot) creates it with the snapshot; a snapshot-only task must not leave one behind.
            stream_owner = {"table": mapping.table, "task_id": task.pk} if task.streams else {}
            position = source.begin_snapshot(conn, **stream_owner)
            if checkpoint.snapshot_state == Checkpoint.SnapshotState.PENDING:
                # Note where the stream starts before reading a single row.
                Checkpoint.objects.filter(pk=checkpoint.pk).update(
                    stream_position=position, snapshot_state=Checkpoint.SnapshotState.RUNNING,
                    snapshot_last_key=None, snapshot_rows=0,
                )
                checkpoint.refresh_from_db()
            total = source.count_rows(mapping.table, conn)
            SyncRun.objects.filter(pk=self.progress.run_id).update(rows_total=total, phase="snapshot")
            done = checkpoint.snapshot_rows
            self.progress.update(phase="snapshot", total=total, done=done, lag=None, force=True)

            # A polled table marks deleted rows in a column: the snapshot must not bring them back.
            is_deleted = getattr(source, "is_deleted", None)

            def chunks() -> Iterator[WorkItem]:
                last_key = checkpoint.snapshot_last_key
                rows_done = checkpoint.snapshot_rows
                while True:
                    rows = source.read_chunk(conn, mapping.table, after_key=last_key, limit=task.batch_size)
                    if not rows:
                        return
                    last_key = [normalize_value(rows[-1][k]) for k in mapping.key_columns]
                    rows_done += len(rows)
                    changes = [
                        Change("delete" if is_deleted is not None and is_deleted(r) else "upsert", mapping.key_of(r), r)
                        for r in rows
                    ]
                    yield WorkItem(changes, commit={"snapshot_last_key": last_key, "snapshot_rows": rows_done})

            processor = BatchProcessor(mapping, embedder, target, assume_empty=assume_empty)
            finished = self._run_stages(chunks(), processor, embedder.dimension, merge=False)
        finally:
            conn.close()
        if finished:
            Checkpoint.objects.filter(pk=checkpoint.pk).update(snapshot_state=Checkpoint.SnapshotState.DONE)
        return finished

    # -- stream ------------------------------------------------------------------------------

    def _stream(self, task, source, mapping, embedder, target) -> None:
        checkpoint = Checkpoint.objects.get(task=task)
        position = checkpoint.stream_position
        if position is None:  # incremental only: start where the log ends now
            position = source.current_position(table=mapping.table, task_id=task.pk)
            Checkpoint.objects.filter(pk=checkpoint.pk).update(stream_position=position)
        SyncRun.objects.filter(pk=self.progress.run_id).update(phase="stream")
        self.progress.update(phase="stream", total=None, done=0, lag=0.0, force=True)
        stream = source.change_stream(
            mapping.table, position, task_id=task.pk,
            heartbeat=settings.RSYNC_BINLOG_HEARTBEAT, read_timeout=settings.RSYNC_BINLOG_READ_TIMEOUT,
            max_rows=max(task.batch_size, 100),
        )

        def items() -> Iterator[WorkItem]:
            replay_checked = time.monotonic()
            for batch in stream:
                commit = {"stream_position": batch.position} if batch.position is not None else None
                yield WorkItem(
                    batch.changes, commit=commit, notices=batch.notices,
                    heartbeat=not batch.changes and batch.position is None,
                )
                if time.monotonic() - replay_checked >= REPLAY_CHECK_INTERVAL:
                    replay_checked = time.monotonic()
                    replay = self._replay_item(source, mapping, task.batch_size)
                    if replay is not None:
                        yield replay

        processor = BatchProcessor(mapping, embedder, target)
        try:
            self._run_stages(
                items(), processor, embedder.dimension, merge=True, batch_size=task.batch_size,
                acknowledge=stream.acknowledge,
            )
        finally:
            stream.close()

    # -- dead letters asked to be replayed ----------------------------------------------------

    def _replay_item(self, source, mapping: TaskMapping, limit: int) -> WorkItem | None:
        """The rows of dead letters marked for replay, read as they are now in the source.

        Reading the source (not the row kept in the letter) means a replay never writes stale
        data over newer changes: a row updated since is written as it is now, a row deleted
        since is deleted from the collection.
        """
        letters = list(
            DeadLetter.objects.filter(task_id=self.task_id, replay_requested_at__isnull=False)
            .exclude(pk__in=list(self._replays_in_flight)).order_by("id").values_list("id", "key")[:limit]
        )
        if not letters:
            return None
        keys = list(dict.fromkeys(tuple(key) for _, key in letters))
        conn = source.connect()
        try:
            rows = {mapping.key_of(row): row for row in source.read_keys(conn, mapping.table, [list(k) for k in keys])}
        finally:
            conn.close()
        is_deleted = getattr(source, "is_deleted", None)
        changes = []
        for key in keys:
            row = rows.get(key)
            if row is None or (is_deleted is not None and is_deleted(row)):
                changes.append(Change("delete", key, row or dict(zip(mapping.key_columns, key))))
            else:
                changes.append(Change("upsert", key, row))
        ids = [pk for pk, _ in letters]
        self._replays_in_flight.update(ids)
        return WorkItem(changes, replayed=ids)

    def _replay(self, task, source, mapping, embedder, target) -> None:
        """Replay every marked dead letter now (a task without a change stream, after its snapshot)."""

        def items() -> Iterator[WorkItem]:
            while (item := self._replay_item(source, mapping, task.batch_size)) is not None:
                yield item

        self._run_stages(items(), BatchProcessor(mapping, embedder, target), embedder.dimension, merge=False)

    # -- the three stages --------------------------------------------------------------------

    def _run_stages(
        self, items: Iterator[WorkItem], processor: BatchProcessor, dimension: int, *, merge: bool,
        batch_size: int = 0, acknowledge: Callable[[dict], None] | None = None,
    ) -> bool:
        """Run reader, embedder and writer concurrently; True when the reader reached its end.

        `acknowledge(position)` is called (in the writer thread) once a stream position is in
        the store and its checkpoint committed: only then may the source forget what came before.
        """
        read_q: queue.Queue = queue.Queue(maxsize=256 if merge else QUEUE_DEPTH)
        write_q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        halt = threading.Event()  # this round is over (stop, end, or a failing stage)
        writer_failed: list[BaseException] = []

        def reader() -> None:
            try:
                for item in items:
                    if halt.is_set() or not _put(read_q, item, halt.is_set):
                        return
                _put(read_q, _END, halt.is_set)
            except BaseException as exc:  # handed to the main thread, which re-raises it
                _put(read_q, _StageError(exc), halt.is_set)
            finally:
                close_old_connections()

        def writer() -> None:
            try:
                while True:
                    item = write_q.get()
                    if item is _END:
                        return
                    prepared, work = item
                    if prepared is not None:
                        processor.write(prepared, dimension)
                    self._commit(prepared, work)
                    if acknowledge is not None and work.commit and "stream_position" in work.commit:
                        acknowledge(work.commit["stream_position"])
            except BaseException as exc:
                writer_failed.append(exc)
                halt.set()
            finally:
                close_old_connections()

        reader_thread = threading.Thread(target=reader, name=f"reader-{self.task_id}", daemon=True)
        writer_thread = threading.Thread(target=writer, name=f"writer-{self.task_id}", daemon=True)
        reader_thread.start()
        writer_thread.start()
        ended = False
        try:
            while not halt.is_set() and not self.stop_requested():
                try:
                    item = read_q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if merge and isinstance(item, WorkItem):
                    item = self._merge_available(item, read_q, batch_size)
                if item is _END:
                    ended = True
                    break
                if isinstance(item, _StageError):
                    raise item.exc
                if item.heartbeat:
                    self.progress.update(lag=0.0)
                    continue
                prepared = processor.prepare(item.changes) if item.changes else None
                if not _put(write_q, (prepared, item), halt.is_set):
                    break
        finally:
            halt.set()
            # The writer finishes what it was handed (each batch commits its own checkpoint).
            while writer_thread.is_alive():
                try:
                    write_q.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    continue
            writer_thread.join()
            reader_thread.join(timeout=5)
        if writer_failed:
            raise writer_failed[0]
        return ended

    def _merge_available(self, first: WorkItem, read_q: queue.Queue, batch_size: int):
        """Join the items already waiting into one batch (the change stream's natural batching)."""
        changes = list(first.changes)
        commit, notices, replayed = first.commit, list(first.notices), list(first.replayed)
        while len(changes) < batch_size:
            try:
                item = read_q.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, WorkItem):
                # Process what we have first; the sentinel is handed back for the next round.
                with read_q.mutex:
                    read_q.queue.appendleft(item)
                break
            changes.extend(item.changes)
            notices.extend(item.notices)
            replayed.extend(item.replayed)
            if item.commit is not None:
                commit = item.commit
        heartbeat = first.heartbeat and not changes
        return WorkItem(changes, commit=commit, notices=notices, heartbeat=heartbeat, replayed=replayed)

    def _commit(self, prepared: PreparedBatch | None, work: WorkItem) -> None:
        """After the store acknowledged: save the checkpoint, the counters and dead letters."""
        if prepared is not None:
            self.counters.add(prepared.counters)
        for text in work.notices:
            self._notice(text)
        with transaction.atomic():
            if work.commit:
                Checkpoint.objects.filter(task_id=self.task_id).update(**work.commit)
            if work.replayed:
                # Written now; a row that failed again gets a new letter just below.
                DeadLetter.objects.filter(pk__in=work.replayed).delete()
            if prepared is not None and prepared.dead:
                DeadLetter.objects.bulk_create([
                    DeadLetter(task_id=self.task_id, run_id=self.progress.run_id, key=d.key, row=d.row, error=d.error)
                    for d in prepared.dead
                ])
            SyncRun.objects.filter(pk=self.progress.run_id).update(
                notices=self.notices, **self.counters.as_run_fields()
            )
        self._replays_in_flight.difference_update(work.replayed)
        if prepared is not None and prepared.truncated:
            if not self._truncated_rows:
                self._notice(
                    f"Row {list(prepared.truncated[0])} has more text than the model takes "
                    f"({self._model_tokens} tokens); only the beginning is embedded. "
                    "Set a chunk size to embed long text whole."
                )
            self._truncated_rows += len(prepared.truncated)
        if prepared is not None and prepared.dead:
            first = prepared.dead[0]
            more = f" (and {len(prepared.dead) - 1} more)" if len(prepared.dead) > 1 else ""
            self.progress.notice(f"Row {first.key} went to the dead letters: {first.error}{more}", level="error")
        lag = None
        if prepared is not None and prepared.last_timestamp is not None:
            lag = max(time.time() - prepared.last_timestamp, 0.0)
        done = work.commit.get("snapshot_rows") if work.commit and "snapshot_rows" in work.commit else None
        if done is None:
            done = self.progress.done + (prepared.counters.read if prepared else 0)
        self.progress.update(counters=self.counters.as_run_fields(), done=done, lag=lag)
