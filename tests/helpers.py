"""Helpers for tests: compare the target with the source, wait for convergence, run a runner, post
forms as a browser would."""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from datasources.connectors import target_connector
from datasources.connectors.base import normalize_value
from datasources.connectors.milvus import HASH_FIELD, KEY_FIELD, TEXT_FIELD
from datasources.connectors.qdrant import local_folder, open_in_this_process
from datasources.models import VectorStore
from tasks.models import SyncTask
from tasks.runner import TaskRunner
from tasks.services import mark_running

# The pairs the issues name, each through the shared convergence tests: every source, every
# store and both ways of capturing changes are covered without the full product.
PAIRS = pytest.mark.parametrize("source_kind,store_kind,capture", [
    ("mysql", "milvus", "log"), ("mysql", "qdrant", "log"), ("postgresql", "milvus", "log"),
    ("mysql", "milvus", "poll"),
])


def polls(task: SyncTask) -> bool:
    return task.capture == SyncTask.Capture.POLL


def delete_sql(task: SyncTask, where: str, table: str = "docs") -> str:
    """Deleting rows as the task can see it: DELETE, or for a polled table (where DELETE is
    invisible by design) marking them in its soft-delete column."""
    if polls(task):
        return f"UPDATE {table} SET {task.soft_delete_column} = CURRENT_TIMESTAMP(6) WHERE {where}"
    return f"DELETE FROM {table} WHERE {where}"


def change_key_sql(task: SyncTask, old: int, new: int) -> list[str]:
    """Statements that move row `old` to primary key `new`. Polling cannot see a key vanish, so
    for a polled table the row moves the way a soft-delete schema moves it: copied under the
    new key and marked deleted under the old one, in one transaction."""
    if not polls(task):
        return [f"UPDATE docs SET id = {new} WHERE id = {old}"]
    columns = "name, module, kind, title, body, stars"
    return ["BEGIN", f"INSERT INTO docs (id, {columns}) SELECT {new}, {columns} FROM docs WHERE id = {old}",
            delete_sql(task, f"id = {old}"), "COMMIT"]


def target_rows(task: SyncTask) -> dict:
    """Every point of the task's collection, by key (payload and text, without the vector)."""
    fields = [TEXT_FIELD, HASH_FIELD, *task.payload_columns]
    rows = _qdrant_local_rows(task.store, task.collection, fields)
    if rows is None:
        target = target_connector(task.store)
        try:
            if not target.has_collection(task.collection):
                return {}
            rows = list(target.iterate(task.collection, fields))
        finally:
            target.close()
    by_key = {}
    for row in rows:
        assert row[KEY_FIELD] not in by_key, f"duplicate key {row[KEY_FIELD]} in the collection"
        by_key[row[KEY_FIELD]] = row
    return by_key


def _qdrant_local_rows(store: VectorStore, collection: str, fields: list[str]) -> list[dict] | None:
    """The points of a Qdrant local-mode collection read from its files, or None to read through
    the store's own target (any other store, or a folder this process already has open).

    A local folder admits one process, and the crash test's `manage.py run_task` subprocesses hold
    it for their whole run: if the test process opened it, even for a moment, a runner starting
    then would fail with "already in use". So unless this process already holds the folder (a
    runner in a thread: reading through a target then shares its client), the points are read
    from qdrant-client's storage without the folder's lock: each collection keeps its points in
    `collection/<name>/storage.sqlite`, one pickled point per row and one committed transaction
    per point, and one SELECT sees a consistent state however busy the writer is. Unlike a read
    through the target, this parses no collection and builds no vector index, which matters on
    two shared cores while the runner is busy.
    """
    folder = local_folder(store.uri) if store.kind == VectorStore.Kind.QDRANT else None
    if folder is None or open_in_this_process(folder):
        return None
    storage = Path(folder) / "collection" / collection / "storage.sqlite"
    if not storage.exists():
        return []
    # A read-write connection: after a SIGKILL mid-commit it may have to roll back a hot
    # journal, which a read-only one cannot.
    with contextlib.closing(sqlite3.connect(storage, timeout=30)) as conn:
        blobs = conn.execute("SELECT point FROM points").fetchall()
    rows = []
    for (blob,) in blobs:
        payload = pickle.loads(blob).payload or {}
        rows.append({KEY_FIELD: payload.get(KEY_FIELD), **{f: payload.get(f) for f in fields}})
    return rows


def source_connection(source):
    """A new autocommit connection to a test source (MariaDB or PostgreSQL), from its model."""
    if source.kind == "postgresql":
        import psycopg2

        conn = psycopg2.connect(host=source.host, port=source.port, user=source.user,
                                password=source.get_password(), dbname=source.database)
        conn.autocommit = True
        return conn
    import pymysql

    return pymysql.connect(host=source.host, port=source.port, user=source.user, password=source.get_password(),
                           database=source.database, autocommit=True, charset="utf8mb4")


def source_rows(conn, table: str = "docs", where: str = "") -> dict:
    with conn.cursor() as cur:
        # unquoted: the same in MySQL and PostgreSQL; `where` is a test's own literal condition
        cur.execute(f"SELECT * FROM {table}" + (f" WHERE {where}" if where else ""))
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}


def expected_text(row: dict, template: str = "{title}\n\n{body}") -> str:
    return template.format(**{k: "" if v is None else normalize_value(v) for k, v in row.items()}).strip()


def assert_converged(task: SyncTask, conn, table: str = "docs", where: str = "") -> None:
    """The collection holds exactly the source's keys (those matching `where`; by default, for
    a polled table, the rows its soft-delete column does not mark); each point's payload and
    text equal its row."""
    if not where and polls(task) and task.soft_delete_column:
        where = f"{task.soft_delete_column} IS NULL"
    src = source_rows(conn, table, where)
    tgt = target_rows(task)
    assert set(tgt) == set(src), (
        f"missing in target: {sorted(set(src) - set(tgt))[:10]}, extra in target: {sorted(set(tgt) - set(src))[:10]}"
    )
    for key, row in src.items():
        point = tgt[key]
        for column in task.payload_columns:
            assert point[column] == normalize_value(row[column]), (key, column, point[column], row[column])
        assert point[TEXT_FIELD] == expected_text(row, task.text_template), key


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except AssertionError as exc:
            last_error = exc
        time.sleep(interval)
    if last_error is not None:
        raise last_error
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_converged(task: SyncTask, conn, table: str = "docs", timeout: float = 60.0, where: str = "") -> None:
    wait_until(lambda: assert_converged(task, conn, table, where) is None, timeout=timeout, message="convergence")


class RunnerThread(threading.Thread):
    """A task's runner in a thread of the test process (so tests can count model calls)."""

    def __init__(self, task: SyncTask) -> None:
        super().__init__(daemon=True, name=f"test-runner-{task.pk}")
        self.task = task
        self.stop_event = threading.Event()
        self.run_result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection

        try:
            mark_running(self.task)
            self.run_result = TaskRunner(self.task.pk, stop_event=self.stop_event, lock_wait=30).run()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            connection.close()

    def stop(self, timeout: float = 60.0):
        self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "the runner did not stop"
        if self.error:
            raise self.error
        return self.run_result


def form_data(form, **overrides) -> dict:
    """What a browser would post for `form` as shown (its current values), with `overrides`."""
    from django import forms

    data = {}
    for bound in form:
        value = bound.value()
        if isinstance(bound.field, forms.BooleanField):
            if value:
                data[bound.html_name] = "on"
            continue
        data[bound.html_name] = "" if value is None else value
    data.update(overrides)
    return data


def admin_form_data(response, **overrides) -> dict:
    """A Django admin change or add page's form as shown, with its inline formsets, and `overrides`."""
    data = form_data(response.context["adminform"].form, **overrides)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update(form_data(formset.management_form))
        for form in formset.forms:
            data.update(form_data(form))
    return data


def websocket_outcome(task_id: int, session: str | None = None) -> str | int:
    """Open a task's progress websocket through the real ASGI app as a browser would: "open", or
    the code it was closed with (4401 signed out, 4404 no access)."""
    import asyncio

    from channels.testing import WebsocketCommunicator

    from rsync_admin.asgi import application

    async def attempt():
        headers = [(b"origin", b"http://localhost")]
        if session:
            headers.append((b"cookie", f"sessionid={session}".encode()))
        communicator = WebsocketCommunicator(application, f"/ws/tasks/{task_id}/", headers=headers)
        connected, code = await communicator.connect()
        if not connected:
            return f"handshake refused ({code})"
        if await communicator.receive_nothing(timeout=0.3):
            await communicator.disconnect()
            return "open"
        message = await communicator.receive_output()
        return message["code"] if message["type"] == "websocket.close" else f"unexpected {message}"

    return asyncio.run(attempt())
