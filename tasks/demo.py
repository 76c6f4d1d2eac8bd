"""`make demo`: private servers, a table of real text, a sync task and the whole product around it.

By default (`WebDemo`) the demo brings up what a deployment runs: the web console (daphne), a
Celery worker and beat, next to private MariaDB, Redis and Milvus Lite servers; it creates an
admin user, a source, a store and a task through the services, starts the task through
`start_task` (so the worker runs it, as when someone presses Start) and follows its progress in
the terminal until Ctrl-C. `manage.py demo --no-web` runs the older console-less demo (`Demo`):
the runner in this process, search results and the change stream printed in the terminal.

What it makes is kept for the next `make demo`: the servers' data under `RUN_DIR/demo/`, the table
in database `demo`, the source, store and task (by name), the Milvus collection and the task's
checkpoint, and the admin's password in `RUN_DIR/demo-admin-password`. `RUN_DIR/demo.json`
records the running servers and processes (pid, port), the owning demo process and how many rows
were loaded, so a second demo reuses servers that are still up and a table that is already loaded.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection

from datasources.connectors.base import ConnectorError
from datasources.connectors.milvus import TEXT_FIELD, MilvusTarget
from datasources.embedders import DEFAULT_MODEL, Embedder, get_embedder
from datasources.services import save_source, save_store
from rsync_admin import corpus, devservers
from rsync_admin.devservers import Server

from .models import Checkpoint, SyncRun, SyncTask
from .progress import TerminalPublisher, format_duration
from .runner import TaskRunner
from .services import mark_running, resnapshot_task, save_task, stop_task

DATABASE = "demo"
TABLE = "docs"
SOURCE_NAME = "demo-mariadb"
STORE_NAME = "demo-milvus"
TASK_NAME = "demo-docs"
COLLECTION = "demo_docs"
TEMPLATE = "{title}\n\n{body}"
PAYLOAD = ["name", "module", "kind", "stars"]
SERVER_NAMES = ("mariadb", "redis", "milvus")
BINARIES = {"mariadb": "mariadbd", "redis": "redis-server", "milvus": "milvus-lite"}
QUERIES = [
    "parse command-line options",
    "read and write zip archives",
    "compute a SHA-256 digest",
    "schedule a coroutine",
]
# The row the demo inserts while streaming, and the query that should find it.
LIVE_MODULE = "demo_live"
LIVE_QUERY = "convert a temperature from Celsius to Fahrenheit"
LIVE_TITLE = "Convert a temperature in degrees Celsius to degrees Fahrenheit."
LIVE_BODY = "Multiply by 9/5 and add 32. Inserted by `make demo` to show the change stream at work."
SEARCH_TIMEOUT = 30.0
# Small batches keep the progress line moving on a slow machine (a batch of 64 embeds in about a
# second on two cores); throughput is the same, the model batches 64 texts at a time anyway.
BATCH_SIZE = 64


Say = Callable[[str], None]


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


# -- the state file ----------------------------------------------------------------------------


def demo_dir() -> Path:
    return Path(settings.RUN_DIR) / "demo"


def state_path() -> Path:
    return Path(settings.RUN_DIR) / "demo.json"


def load_state() -> dict[str, Any]:
    path = state_path()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"servers": {}}
    except ValueError:
        return {"servers": {}}  # a torn write: start over, the data directories are still there
    state.setdefault("servers", {})
    return state


def save_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str | None:
    """The command line of a process, or None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a stopped server in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_alive(name: str, record: dict[str, Any]) -> bool:
    """The recorded server still runs: its pid lives, is the right program and its port answers."""
    pid, port = record.get("pid"), record.get("port")
    if not pid or not port or not _pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    if cmdline is not None and BINARIES[name] not in cmdline:
        return False  # the pid was reused by another program
    return _port_open(port)


def other_demo_pid(state: dict[str, Any]) -> int | None:
    """The pid of another demo process that is still running, if any."""
    pid = state.get("owner_pid")
    if not pid or pid == os.getpid() or not _pid_alive(pid):
        return None
    cmdline = _cmdline(pid)
    if cmdline is not None and "demo" not in cmdline:
        return None
    return pid


# -- servers -----------------------------------------------------------------------------------


@dataclass
class DemoServers:
    """The servers this demo holds (started or adopted); it stops them on the way out."""

    servers: dict[str, Server] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Server:
        return self.servers[name]


def _start(name: str, directory: Path, port: int | None) -> Server:
    if name == "mariadb":
        return devservers.start_mariadb(directory, port=port)
    if name == "redis":
        return devservers.start_redis(directory, port=port)
    return devservers.start_milvus(directory, port=port)


def ensure_servers(servers: DemoServers, state: dict[str, Any], say: Say) -> None:
    """Reuse the recorded servers that are still up; start the others (on their old port if free).

    Each server goes into `servers` and the state file as soon as it is up, so an interrupted
    start leaves nothing unaccounted for: the caller stops whatever `servers` holds.
    """
    for name in SERVER_NAMES:
        directory = demo_dir() / name
        record = state["servers"].get(name) or {}
        if server_alive(name, record):
            pid_file = directory / "demo.pid"
            pid_file.write_text(f"{record['pid']}\n")
            server = Server(name, record["port"], directory.resolve(), pid_file=pid_file)
            say(f"  {name:8} reusing pid {record['pid']} on port {record['port']}")
        else:
            old_port = record.get("port")
            port = old_port if old_port and _port_free(old_port) else None
            started = time.monotonic()
            try:
                server = _start(name, directory, port)
            except RuntimeError:
                if port is None:
                    raise
                server = _start(name, directory, None)  # someone took the old port meanwhile
            (directory / "demo.pid").write_text(f"{server.pid}\n")
            say(f"  {name:8} started pid {server.pid} on port {server.port} "
                f"({time.monotonic() - started:.1f}s; data in {directory})")
        servers.servers[name] = server
        state["servers"][name] = {"pid": server.pid, "port": server.port, "dir": str(directory)}
        save_state(state)


def stop_servers(servers: DemoServers, state: dict[str, Any], say: Say) -> None:
    for name in reversed(SERVER_NAMES):
        server = servers.servers.pop(name, None)
        if server is None:
            continue
        pid = server.pid
        server.stop()
        # Keep the port: the next demo starts the server on it again when it is free.
        state["servers"][name] = {"port": server.port, "dir": str(server.directory)}
        save_state(state)
        say(f"  {name:8} stopped (pid {pid})")


# -- the table and the task ----------------------------------------------------------------------


def load_table(mariadb: Server, rows: int | None, state: dict[str, Any], say: Say) -> tuple[int, bool]:
    """The demo table with `rows` docstrings (all by default); (row count, whether it was (re)loaded).

    A table that exists with rows is kept unless a different number of rows was asked for than
    was loaded last time (rows changed by hand or by the demo itself do not count).
    """
    wanted = len(corpus.stdlib_docstrings()) if rows is None else rows  # beyond the corpus, texts repeat
    admin = devservers.mariadb_root(mariadb)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` CHARACTER SET utf8mb4")
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (DATABASE, TABLE),
            )
            exists = cur.fetchone()[0] > 0
            count = 0
            if exists:
                cur.execute(f"SELECT COUNT(*) FROM `{DATABASE}`.`{TABLE}`")
                count = cur.fetchone()[0]
    finally:
        admin.close()
    loaded = state.get("rows_loaded")
    if count and (loaded is None or loaded == wanted):
        say(f"Table {DATABASE}.{TABLE}: reusing {count:,} rows.")
        state["rows_loaded"] = loaded or wanted
        save_state(state)
        return count, False
    if count and loaded:
        say(f"Table {DATABASE}.{TABLE}: {loaded:,} docstrings were loaded, {wanted:,} asked for: reloading.")
    elif count:
        say(f"Table {DATABASE}.{TABLE}: the last load did not finish: reloading.")
    state["rows_loaded"] = 0  # a load in progress: an interrupted one is redone next time
    save_state(state)
    conn = devservers.mariadb_root(mariadb, DATABASE)
    try:
        started = time.monotonic()
        corpus.create_docs_table(conn, TABLE, wanted)
    finally:
        conn.close()
    say(f"Table {DATABASE}.{TABLE}: loaded {wanted:,} docstrings of the standard library "
        f"in {time.monotonic() - started:.1f}s.")
    state["rows_loaded"] = wanted
    save_state(state)
    return wanted, True


def ensure_task(mariadb: Server, milvus: Server, *, reloaded: bool) -> SyncTask:
    """The demo's source, store and task, created or updated by name through the services."""
    source = save_source(name=SOURCE_NAME, kind="mysql", host="127.0.0.1", port=mariadb.port,
                         database=DATABASE, user="root", password="")
    store = save_store(name=STORE_NAME, kind="milvus", uri=milvus_uri(milvus))
    task = save_task(
        name=TASK_NAME, source=source, store=store, table=TABLE, text_template=TEMPLATE,
        payload_columns=PAYLOAD, embedding_model=DEFAULT_MODEL, collection=COLLECTION,
        mode=SyncTask.Mode.FULL_INCREMENTAL, batch_size=BATCH_SIZE,
    )
    if reloaded:
        # New table contents: the old points and the old binlog position no longer apply.
        target = MilvusTarget.from_model(store)
        try:
            target.drop_collection(COLLECTION)
        finally:
            target.close()
        resnapshot_task(task)
    return task


def ensure_loaded(target: MilvusTarget) -> None:
    """Load the collection into memory if it exists but is not loaded.

    A Milvus Lite server that restarted lists its collections as released: search, and the
    runner's fetch of stored text hashes, fail until they are loaded again.
    """
    if not target.has_collection(COLLECTION):
        return  # the runner creates it (loaded)
    try:
        state = str(target.client.get_load_state(COLLECTION).get("state", ""))
        if "NotLoad" in state:
            target.client.load_collection(COLLECTION)
    except Exception as exc:
        raise target.explain(exc) from exc


def use_redis(redis: Server) -> None:
    """Point this process at the private Redis (runner lock, task events, embedding cache).

    Settings are loaded already when a command runs; the lock and the event publisher read
    `REDIS_URL` when they connect, and the channel layer is built on first use.
    """
    url = f"redis://127.0.0.1:{redis.port}/0"
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    layers = copy.deepcopy(getattr(settings, "CHANNEL_LAYERS", {}))
    default = layers.get("default", {})
    if "hosts" in default.get("CONFIG", {}):
        default["CONFIG"]["hosts"] = [url]
        settings.CHANNEL_LAYERS = layers


def milvus_uri(milvus: Server) -> str:
    return f"http://127.0.0.1:{milvus.port}"


# -- progress while the runner works ---------------------------------------------------------------


class DemoPublisher:
    """The runner's progress line while it snapshots; afterwards it only keeps the latest payload,
    and the demo prints each change the stream applies as a line of its own."""

    def __init__(self, stream: IO[str]) -> None:
        self.terminal = TerminalPublisher(stream)
        self.stream = stream
        self.latest: dict | None = None
        self.last_snapshot: dict | None = None
        self.first_stream: dict | None = None
        self.snapshot_started: float | None = None
        self.stream_started: float | None = None
        self.line_open = False
        self._lock = threading.Lock()

    def __call__(self, payload: dict) -> None:
        with self._lock:
            self.latest = payload
            if payload["phase"] == "stream":
                if self.first_stream is None:
                    self.first_stream, self.stream_started = payload, time.monotonic()
                return
            if payload["phase"] == "snapshot":
                if self.snapshot_started is None:
                    self.snapshot_started = time.monotonic()
                self.last_snapshot = payload
            self.terminal(payload)
            self.line_open = self.terminal.tty

    @property
    def phase(self) -> str:
        return (self.latest or {}).get("phase", "")

    def end_line(self) -> None:
        with self._lock:
            if self.line_open:
                self.stream.write("\n")
                self.stream.flush()
                self.line_open = False


class RunnerThread(threading.Thread):
    def __init__(self, task_id: int, publisher: DemoPublisher) -> None:
        super().__init__(name=f"demo-runner-{task_id}", daemon=True)
        self.task_id = task_id
        self.publisher = publisher
        self.stop_event = threading.Event()
        self.result: SyncRun | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = TaskRunner(
                self.task_id, publishers=[self.publisher], lock_wait=10.0, stop_event=self.stop_event,
            ).run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            connection.close()

    def failure(self) -> str:
        """Why the runner ended on its own."""
        if self.error is not None:
            return f"The sync runner crashed: {type(self.error).__name__}: {self.error}"
        if self.result is None:
            return "Another runner holds this task's lock (is another demo or worker running it?)."
        return f"The sync run ended ({self.result.status}): {self.result.error or 'no error recorded'}"


# -- search ------------------------------------------------------------------------------------


def search(target: MilvusTarget, embedder: Embedder, query: str, limit: int = 3) -> list[dict]:
    vector = embedder.encode([query])[0]
    return target.search(COLLECTION, vector, limit=limit, fields=["name", "kind"])


def format_hit(hit: dict, width: int = 110) -> str:
    title = (hit.get(TEXT_FIELD) or "").split("\n", 1)[0]
    line = f"    {hit['score']:.3f}  {hit.get('name', hit['key'])}  {title}"
    return line if len(line) <= width else line[: width - 3] + "..."


def print_search(target: MilvusTarget, embedder: Embedder, query: str, say: Say, limit: int = 3) -> None:
    say(f'  "{query}"')
    hits = search(target, embedder, query, limit)
    if not hits:
        say("    (no results)")
    for hit in hits:
        say(format_hit(hit))


def insert_live_row(mariadb: Server) -> tuple[int, int]:
    """Delete the row an earlier demo inserted, insert a new one; (new id, rows deleted)."""
    conn = devservers.mariadb_root(mariadb, DATABASE)
    try:
        with conn.cursor() as cur:
            # A key never used before, so the search cannot find a point that was there already.
            cur.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM `{TABLE}`")
            new_id = int(cur.fetchone()[0])
            deleted = cur.execute(f"DELETE FROM `{TABLE}` WHERE module = %s", (LIVE_MODULE,))
        corpus.insert_rows(conn, TABLE, [{
            "id": new_id, "name": f"{LIVE_MODULE}.celsius_to_fahrenheit", "module": LIVE_MODULE, "kind": "function",
            "title": LIVE_TITLE, "body": LIVE_BODY, "stars": 5,
        }])
    finally:
        conn.close()
    return new_id, deleted


def wait_searchable(target: MilvusTarget, embedder: Embedder, key: int, timeout: float) -> dict | None:
    """Search until `key` is among the hits of the live query; the hit (with its rank), or None."""
    vector = embedder.encode([LIVE_QUERY])[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = target.search(COLLECTION, vector, limit=5, fields=["name"])
        for rank, hit in enumerate(hits, 1):
            if hit["key"] == key:
                return {**hit, "rank": rank}
        time.sleep(0.05)
    return None


# -- the demo ----------------------------------------------------------------------------------


def _counters(payload: dict | None) -> dict[str, int]:
    return dict((payload or {}).get("counters") or {})


def _describe_change(before: dict[str, int], after: dict[str, int]) -> str | None:
    names = [("rows_upserted", "upserted"), ("rows_deleted", "deleted"), ("rows_unchanged", "unchanged"),
             ("rows_failed", "failed")]
    parts = [f"{after.get(k, 0) - before.get(k, 0)} {label}" for k, label in names
             if after.get(k, 0) != before.get(k, 0)]
    if not parts:
        return None
    embedded = after.get("rows_embedded", 0) - before.get("rows_embedded", 0)
    return ", ".join(parts) + (f" ({embedded} embedded)" if embedded else "")


class DemoSession:
    """What both demos share: the run directory's state, its private servers, and a run that
    Ctrl-C (or SIGTERM/SIGHUP) ends cleanly wherever the main thread is."""

    def __init__(self, *, rows: int | None, keep_servers: bool, out: IO[str] | None = None) -> None:
        self.rows = rows
        self.keep_servers = keep_servers
        self.out = out or sys.stdout
        self.state: dict[str, Any] = {"servers": {}}
        self.servers = DemoServers()
        self.task: SyncTask | None = None

    def say(self, text: str = "") -> None:
        # The terminal may be gone (SIGHUP): shutting down must go on regardless.
        with contextlib.suppress(OSError, ValueError):
            self.out.write(text + "\n")
            self.out.flush()

    def run(self) -> None:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
        for sig in previous:
            signal.signal(sig, _interrupt)
        # Even when started with SIGINT ignored (a background job of a script): Ctrl-C stops the demo.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self._run()
        except KeyboardInterrupt:
            self._interrupted()
            self.say("\nStopping...")
        finally:
            for sig in (signal.SIGINT, *previous):
                signal.signal(sig, _still_stopping)
            try:
                self._shutdown()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _claim_run_dir(self) -> None:
        """Load the run directory's state and make this process its demo (one at a time)."""
        self.state = load_state()
        other = other_demo_pid(self.state)
        if other is not None:
            raise DemoError(
                f"Another demo is running (pid {other}); stop it with Ctrl-C first (or `kill {other}`)."
            )
        self.state["owner_pid"] = os.getpid()
        save_state(self.state)

    def _run(self) -> None:
        raise NotImplementedError

    def _interrupted(self) -> None:
        """Tidy the terminal before "Stopping..." (a progress line may be open)."""

    def _shutdown(self) -> None:
        raise NotImplementedError


class Demo(DemoSession):
    """The console-less demo (`demo --no-web`): the sync runs here, searches show in the terminal."""

    def __init__(self, *, rows: int | None, keep_servers: bool, out: IO[str] | None = None) -> None:
        super().__init__(rows=rows, keep_servers=keep_servers, out=out)
        self.runner: RunnerThread | None = None
        self.target: MilvusTarget | None = None

    def _interrupted(self) -> None:
        if self.runner is not None and self.runner.publisher.line_open:
            self.runner.publisher.end_line()

    def _run(self) -> None:
        self._claim_run_dir()
        self.say(f"Private servers under {demo_dir()}:")
        ensure_servers(self.servers, self.state, self.say)
        mariadb, redis, milvus = self.servers["mariadb"], self.servers["redis"], self.servers["milvus"]
        use_redis(redis)

        call_command("migrate", verbosity=0, interactive=False)
        self.say(f"Metadata database {settings.DATABASES['default']['NAME']}: migrated.")

        _, reloaded = load_table(mariadb, self.rows, self.state, self.say)
        self.task = task = ensure_task(mariadb, milvus, reloaded=reloaded)
        self.say(f"Task {task.name!r}: {task.source.name} {DATABASE}.{TABLE} -> {task.store.name} "
                 f"collection {task.collection!r}, template {task.text_template!r}, payload {', '.join(PAYLOAD)}.")

        started = time.monotonic()
        _quiet_model_loading()
        embedder = get_embedder(task.embedding_model)
        self.say(f"Embedding model {embedder.name} ({embedder.dimension} dimensions) loaded in "
                 f"{time.monotonic() - started:.1f}s.")
        self.target = MilvusTarget.from_model(task.store)
        ensure_loaded(self.target)

        checkpoint, _ = Checkpoint.objects.get_or_create(task=task)
        if checkpoint.snapshot_state == Checkpoint.SnapshotState.DONE:
            self.say("Snapshot: done earlier (checkpoint kept); the stream resumes from the saved binlog position.")
        elif checkpoint.snapshot_state == Checkpoint.SnapshotState.RUNNING:
            self.say(f"Snapshot: resuming after {checkpoint.snapshot_rows:,} rows.")
        else:
            self.say("Snapshot: reading and embedding every row (the line shows rows, rate and ETA; "
                     "Ctrl-C stops and a later `make demo` resumes).")

        publisher = DemoPublisher(self.out)
        mark_running(task)
        self.runner = RunnerThread(task.pk, publisher)
        self.runner.start()
        self._wait_for_stream()
        publisher.end_line()
        if publisher.snapshot_started is not None and publisher.stream_started is not None:
            # Counters at the start of the stream are the snapshot's (the last snapshot line may be
            # a batch behind: progress is published at most twice a second).
            elapsed = publisher.stream_started - publisher.snapshot_started
            c = _counters(publisher.first_stream)
            read = c.get("rows_read", 0)
            self.say(f"Snapshot done in {format_duration(elapsed)} ({elapsed:.1f}s); this run read {read:,}, "
                     f"embedded {c.get('rows_embedded', 0):,}, unchanged {c.get('rows_unchanged', 0):,}, "
                     f"failed {c.get('rows_failed', 0):,}; {read / elapsed if elapsed else 0:.0f} rows/s.")
        self.say(f"Collection {COLLECTION!r} holds {self.target.count(COLLECTION):,} points.")

        self.say("\nSemantic search (cosine similarity, best first):")
        for query in QUERIES:
            print_search(self.target, embedder, query, self.say)

        self.say("\nThe change stream is running. Inserting a new row into the source table...")
        before = _counters(publisher.latest)
        new_id, deleted = insert_live_row(mariadb)
        inserted = time.monotonic()
        if deleted:
            self.say(f"  (first deleted the row the previous demo inserted: {deleted} row)")
        hit = wait_searchable(self.target, embedder, new_id, SEARCH_TIMEOUT)
        if hit is None:
            self.say(f"  Row {new_id} was not searchable after {SEARCH_TIMEOUT:.0f}s (see the log above).")
        else:
            self.say(f'  Row {new_id} ({hit["name"]}) became searchable {time.monotonic() - inserted:.2f}s '
                     f'after the INSERT committed: rank {hit["rank"]} for "{LIVE_QUERY}", score {hit["score"]:.3f}.')
            self._settle(before, upserted=1, deleted=deleted)

        self._instructions(mariadb, milvus)
        self._follow(embedder)

    def _settle(self, before: dict[str, int], *, upserted: int, deleted: int, timeout: float = 5.0) -> None:
        """Wait until the published counters include the demo's own changes, so that they are not
        reported again as changes made by hand."""
        assert self.runner is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = _counters(self.runner.publisher.latest)
            if (now.get("rows_upserted", 0) - before.get("rows_upserted", 0) >= upserted
                    and now.get("rows_deleted", 0) - before.get("rows_deleted", 0) >= deleted):
                return
            time.sleep(0.1)

    def _wait_for_stream(self) -> None:
        assert self.runner is not None and self.task is not None
        while True:
            if not self.runner.is_alive():
                self.runner.publisher.end_line()
                raise DemoError(self.runner.failure())
            if self.runner.publisher.phase == "stream":
                state = Checkpoint.objects.filter(task=self.task).values_list("snapshot_state", flat=True).first()
                if state == Checkpoint.SnapshotState.DONE:
                    return
            time.sleep(0.2)

    def _instructions(self, mariadb: Server, milvus: Server) -> None:
        sock = demo_dir() / "mariadb" / "mysqld.sock"
        self.say(f"""
Change the source and watch the sync follow (each applied change is printed below):
  mariadb -h 127.0.0.1 -P {mariadb.port} -u root {DATABASE}      (or: mariadb -S {sock} -u root {DATABASE})
    UPDATE {TABLE} SET title = 'Send e-mail through an SMTP server' WHERE id = 2;
    DELETE FROM {TABLE} WHERE id = 1;
    INSERT INTO {TABLE} (id, name, module, kind, title, body)
      VALUES (1000001, 'kitchen.bread', 'kitchen', 'note', 'Bake sourdough bread', 'Flour, water, starter.');
Milvus: {milvus_uri(milvus)}, collection {COLLECTION!r}.  Metadata: {settings.DATABASES['default']['NAME']}.""")
        if _stdin_is_terminal():
            self.say("Type a search query and press Enter. Ctrl-C stops the sync and the servers.")
        else:
            self.say("Ctrl-C stops the sync and the servers.")

    def _follow(self, embedder: Embedder) -> None:
        """Print each change the stream applies; answer queries typed on the terminal."""
        assert self.runner is not None and self.target is not None
        interactive = _stdin_is_terminal()
        seen = _counters(self.runner.publisher.latest)
        while True:
            if not self.runner.is_alive():
                raise DemoError(self.runner.failure())
            if interactive:
                ready, _, _ = select.select([sys.stdin], [], [], 0.5)
                if ready:
                    line = sys.stdin.readline()
                    if not line:
                        interactive = False  # end of input: keep streaming
                    elif line.strip():
                        print_search(self.target, embedder, line.strip(), self.say, limit=5)
            else:
                time.sleep(0.5)
            now = _counters(self.runner.publisher.latest)
            change = _describe_change(seen, now)
            if change:
                self.say(f"  {time.strftime('%H:%M:%S')}  synced: {change}")
                seen = now

    def _shutdown(self) -> None:
        if self.runner is not None and self.runner.is_alive():
            self.say("  sync     finishing the current batch and saving the checkpoint...")
            self.runner.stop_event.set()
            self.runner.join(60)
            self.runner.publisher.end_line()
            if self.runner.is_alive():
                self.say("  sync     did not stop within 60s; its checkpoint is the last one saved.")
        if self.runner is not None and self.runner.result is not None:
            run = self.runner.result
            self.say(f"  sync     run {run.pk} {run.status}")
        if self.task is not None:
            stop_task(self.task)
        if self.target is not None:
            self.target.close()
        if self.keep_servers:
            for name, server in self.servers.servers.items():
                self.say(f"  {name:8} left running (pid {server.pid}, port {server.port}); "
                         "the next `make demo` reuses it")
        else:
            stop_servers(self.servers, self.state, self.say)
        if self.state.get("owner_pid") == os.getpid():
            self.state["owner_pid"] = None
            save_state(self.state)
        if self.task is not None:
            self.say("Stopped. `make demo` again picks up where this one left off.")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _still_stopping(signum, frame) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write("\n  (still stopping: the servers are being shut down)\n")
        sys.stdout.flush()


def _quiet_model_loading() -> None:
    """No "Loading weights" progress bar from transformers in the middle of the demo's output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _stdin_is_terminal() -> bool:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return sys.stdin is not None and sys.stdin.isatty()
    return False


def run_demo(*, rows: int | None = None, keep_servers: bool = False, out: IO[str] | None = None) -> None:
    """Run the demo in the foreground until Ctrl-C (see the module docstring)."""
    try:
        Demo(rows=rows, keep_servers=keep_servers, out=out).run()
    except ConnectorError as exc:
        raise DemoError(str(exc)) from exc


# -- the demo with the console: web, worker and beat ---------------------------------------------

ADMIN_USERNAME = "admin"
WEB_PORT = 8000
# Threads, not prefork: a runner holds its worker slot for as long as its task runs (snapshot, then
# the change stream) and mostly waits on the databases or on torch, which releases the GIL; threads
# share one copy of the embedding model (prefork would load it in every child). Four slots: the demo
# task and up to three more that you start from the console.
WORKER_CONCURRENCY = 4
PROCESS_NAMES = ("worker", "beat", "web")
START_TIMEOUT = 120.0  # two busy cores: Django, Celery and the first imports of torch take a while
STOP_TIMEOUT = 30.0
RUN_STOP_TIMEOUT = 60.0


def password_path() -> Path:
    return Path(settings.RUN_DIR) / "demo-admin-password"


def logs_dir() -> Path:
    return demo_dir() / "logs"


def admin_password() -> str:
    """The demo admin's password: generated on first use, kept in RUN_DIR (mode 0600) for later runs."""
    path = password_path()
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return password
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # nothing to misread
    password = "".join(secrets.choice(alphabet) for _ in range(20))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    os.replace(tmp, path)
    return password


def ensure_admin(password: str) -> str:
    """The demo's superuser `admin` with `password`, created or put back; what was done, in words."""
    from django.contrib.auth import get_user_model

    from accounts.roles import SUPER_ADMIN
    from accounts.services import create_user, reset_password

    user = get_user_model().objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        user = create_user(username=ADMIN_USERNAME, password=password, roles=[SUPER_ADMIN])
        done = "created"
    elif not user.check_password(password):
        reset_password(user, password)
        done = f"password set back to the one in {password_path()}"
    else:
        done = "reusing"
    if not (user.is_active and user.is_staff and user.is_superuser):
        user.is_active = user.is_staff = user.is_superuser = True  # the Django admin needs staff
        user.save(update_fields=["is_active", "is_staff", "is_superuser"])
    return done


def pick_web_port(preferred: int = WEB_PORT, tries: int = 100) -> int:
    """`preferred` when nothing listens there, else the next free port above it."""
    for port in range(preferred, preferred + tries):
        if _port_free(port) and not _port_open(port):
            return port
    raise DemoError(f"No free port between {preferred} and {preferred + tries - 1} for the web console.")


def child_env(redis: Server) -> dict[str, str]:
    """Environment for web, worker and beat: this process's, pointed at the private Redis."""
    url = f"redis://127.0.0.1:{redis.port}/0"
    env = dict(os.environ)
    env.update({
        "REDIS_URL": url, "CELERY_BROKER_URL": url, "RSYNC_RUN_DIR": str(settings.RUN_DIR),
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "rsync_admin.settings"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def process_command(name: str, port: int) -> list[str]:
    """The command line of the web process (daphne), the worker or beat, from this virtualenv."""
    bin_dir = Path(sys.executable).parent
    if name == "web":
        return [str(bin_dir / "daphne"), "-b", "127.0.0.1", "-p", str(port), "rsync_admin.asgi:application"]
    celery = [str(bin_dir / "celery"), "-A", "rsync_admin"]
    if name == "worker":
        return [*celery, "worker", "--pool=threads", f"--concurrency={WORKER_CONCURRENCY}", "--loglevel=INFO",
                "--without-gossip", "--without-mingle", "--hostname=demo@%h"]
    return [*celery, "beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--loglevel=INFO"]


def _process_marker(name: str) -> str:
    return "daphne" if name == "web" else "celery"


def process_alive(name: str, record: dict[str, Any]) -> bool:
    """A recorded web/worker/beat process still runs (and is that program, not a reused pid)."""
    pid = record.get("pid")
    if not _pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or (_process_marker(name) in cmdline and "rsync_admin" in cmdline)


def _signal_group(pid: int, sig: int) -> None:
    """Signal a child's process group (it leads one: started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_gone(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def stop_process(pid: int, proc: subprocess.Popen | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM (warm shutdown for Celery, a clean stop for daphne), then SIGKILL; whether it stopped in time."""
    _signal_group(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout, proc):
        return True
    _signal_group(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0, proc)
    return False


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    log_start: int  # where this start's output begins in the (appended) log

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log, "rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode(errors="replace")
        return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().rstrip().splitlines()[-lines:])


def runner_alive(task_id: int) -> bool:
    """Whether a runner holds the task's lock: a holder on this host whose process is gone does not count."""
    from .locks import RunnerLock

    holder = RunnerLock(task_id).holder()
    if holder is None:
        return False
    return holder.get("host") != socket.gethostname() or _pid_alive(int(holder.get("pid") or 0))


def _last_seq(task_id: int) -> int:
    from .events import latest_event

    event = latest_event(task_id)
    return event["seq"] if event else 0


class WebDemo(DemoSession):
    """The console, a worker and beat around the demo task, in the foreground until Ctrl-C."""

    def __init__(self, *, rows: int | None, keep_servers: bool, port: int | None = None,
                 out: IO[str] | None = None) -> None:
        super().__init__(rows=rows, keep_servers=keep_servers, out=out)
        self.port = port
        self.children: dict[str, Child] = {}
        self.url = ""
        self.line_open = False

    def say(self, text: str = "") -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.line_open:
                self.out.write("\n")
                self.line_open = False
        super().say(text)

    # -- bringing it up ------------------------------------------------------------------------

    def _run(self) -> None:
        self._claim_run_dir()
        self._stop_leftover_processes()

        self.say(f"Private servers under {demo_dir()}:")
        ensure_servers(self.servers, self.state, self.say)
        mariadb, redis, milvus = self.servers["mariadb"], self.servers["redis"], self.servers["milvus"]
        use_redis(redis)

        call_command("migrate", verbosity=0, interactive=False)
        self.say(f"Metadata database {settings.DATABASES['default']['NAME']}: migrated.")
        call_command("collectstatic", verbosity=0, interactive=False)
        self.say(f"Static files collected into {settings.STATIC_ROOT}.")

        _, reloaded = load_table(mariadb, self.rows, self.state, self.say)
        self.task = task = ensure_task(mariadb, milvus, reloaded=reloaded)
        self.say(f"Task {task.name!r}: {task.source.name} {DATABASE}.{TABLE} -> {task.store.name} "
                 f"collection {task.collection!r}, template {task.text_template!r}, payload {', '.join(PAYLOAD)}.")
        target = MilvusTarget.from_model(task.store)
        try:
            ensure_loaded(target)
        finally:
            target.close()

        password = admin_password()
        self.say(f"User {ADMIN_USERNAME!r}: {ensure_admin(password)}.")

        self._start_processes(redis)
        runs = self._start_tasks()
        self._banner(password, runs)
        self._follow(runs[self.task.pk])

    def _stop_leftover_processes(self) -> None:
        """Web, worker and beat of an earlier demo that did not stop them (it was killed)."""
        for name, record in (self.state.get("processes") or {}).items():
            if process_alive(name, record):
                self.say(f"  {name:8} stopping pid {record['pid']}, left over from an earlier demo")
                stop_process(record["pid"], timeout=10.0)
        self.state["processes"] = {}
        save_state(self.state)

    def _spawn(self, name: str, port: int, env: dict[str, str]) -> Child:
        log = logs_dir() / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = process_command(name, port)
        with open(log, "ab") as handle:
            handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            start = handle.tell()
            proc = subprocess.Popen(
                command, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL, stdout=handle,
                stderr=subprocess.STDOUT, start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
        child = Child(name, proc, log, start)
        self.children[name] = child
        self.state.setdefault("processes", {})[name] = {"pid": proc.pid, "port": port if name == "web" else None}
        save_state(self.state)
        return child

    def _start_processes(self, redis: Server) -> None:
        env = child_env(redis)
        started = time.monotonic()
        for name in ("worker", "beat"):
            self._spawn(name, 0, env)
        for _attempt in range(3):
            port = self.port or pick_web_port(WEB_PORT)
            web = self._spawn("web", port, env)
            if self._wait_web(web, port):
                break
            if self.port or "Address already in use" not in web.output():
                raise DemoError(f"The web process (daphne) exited with {web.proc.returncode}; "
                                f"see {web.log}:\n{web.tail()}")
            self.children.pop("web")  # someone took the port meanwhile: try the next one
        else:
            raise DemoError("The web process could not bind a port; see the log above.")
        self.url = f"http://127.0.0.1:{port}"
        self._wait_worker()
        for name in PROCESS_NAMES:
            child = self.children[name]
            self.say(f"  {name:8} started pid {child.proc.pid}{f' on port {port}' if name == 'web' else ''} "
                     f"(log {child.log})")
        self.say(f"Web, worker and beat up in {time.monotonic() - started:.1f}s.")

    def _check_children(self) -> None:
        for child in self.children.values():
            if child.proc.poll() is not None:
                raise DemoError(f"The {child.name} process exited with {child.proc.returncode}; "
                                f"see {child.log}:\n{child.tail()}")

    def _wait_web(self, web: Child, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if web.proc.poll() is not None:
                return False
            self._check_children()
            if _port_open(port):
                return True
            time.sleep(0.2)
        raise DemoError(f"The web process did not open port {port} within {START_TIMEOUT:.0f}s; see {web.log}.")

    def _wait_worker(self) -> None:
        worker = self.children["worker"]
        deadline = time.monotonic() + START_TIMEOUT
        while " ready." not in worker.output():
            self._check_children()
            if time.monotonic() > deadline:
                raise DemoError(f"The worker was not ready within {START_TIMEOUT:.0f}s; see {worker.log}.")
            time.sleep(0.2)

    def _start_tasks(self) -> dict[int, SyncRun]:
        """Start the demo task, and the tasks the last demo stopped on its way out, through the service."""
        from .services import TaskNotReady, start_task

        assert self.task is not None
        ids = [self.task.pk, *[i for i in self.state.get("resume_tasks") or [] if i != self.task.pk]]
        runs: dict[int, SyncRun] = {}
        for task in SyncTask.objects.filter(pk__in=ids).select_related("source", "store"):
            if not runner_alive(task.pk):
                # Runs of a demo that was killed: nobody runs them any more (and Redis, which held
                # their queue messages, may have restarted).
                SyncRun.objects.filter(task=task, status__in=SyncRun.ACTIVE).update(
                    status=SyncRun.Status.FAILED, error="The runner went away (the demo running it was killed).",
                )
            try:
                runs[task.pk] = start_task(task)
            except TaskNotReady as exc:
                if task.pk == self.task.pk:
                    raise DemoError(f"Task {task.name!r} cannot start: {exc}") from exc
                self.say(f"Task {task.name!r} (running when the last demo stopped) cannot start: {exc}")
            else:
                if task.pk != self.task.pk:
                    self.say(f"Task {task.name!r}: resumed (it was running when the last demo stopped).")
        self.state["resume_tasks"] = []
        save_state(self.state)
        return runs

    def _banner(self, password: str, runs: dict[int, SyncRun]) -> None:
        assert self.task is not None
        checkpoint = Checkpoint.objects.filter(task=self.task).first()
        if checkpoint is not None and checkpoint.snapshot_state == Checkpoint.SnapshotState.DONE:
            snapshot = "snapshot done earlier (checkpoint kept): it follows the change stream"
        elif checkpoint is not None and checkpoint.snapshot_state == Checkpoint.SnapshotState.RUNNING:
            snapshot = f"snapshot resumes after {checkpoint.snapshot_rows:,} rows"
        else:
            snapshot = "snapshot of every row first, then the change stream"
        task_url = f"{self.url}/tasks/{self.task.pk}/"
        self.say(f"""
Data Rsync is running.
  Console    {self.url}/
  Log in     user {ADMIN_USERNAME}, password {password}
             (kept in {password_path()}; a later `make demo` uses it again)
  Task       {task_url}
             run {runs[self.task.pk].pk} started through the worker: {snapshot}.
             Watch it live there and try the search playground, e.g. "{QUERIES[0]}".
  Admin      {self.url}/admin/      API docs {self.url}/api/docs/
  Logs       {logs_dir()}/web.log, worker.log, beat.log
  MariaDB    mariadb -h 127.0.0.1 -P {self.servers['mariadb'].port} -u root {DATABASE}   (changes show up live)
Ctrl-C stops the sync (after its current batch), the web process, the worker, beat and the servers.
""")

    # -- following the task --------------------------------------------------------------------

    def _follow(self, run: SyncRun) -> None:
        """Print the task's progress from its events until Ctrl-C; stop if a process dies."""
        import redis as redis_lib

        from .events import events_after

        assert self.task is not None
        publisher = DemoPublisher(self.out)
        seq, run_id, announced, seen = 0, run.pk, False, {}
        seq = max(seq, _last_seq(self.task.pk) - 1)  # the latest kept event shows where things stand
        while True:
            self._check_children()
            try:
                events = events_after(self.task.pk, seq)
            except (redis_lib.RedisError, OSError):
                events = []
            for event in events:
                seq = event["seq"]
                if event.get("type", "progress") != "progress":
                    if event.get("message"):
                        self._say_over(publisher, f"  {time.strftime('%H:%M:%S')}  {event['message']}")
                    continue
                if event.get("run") != run_id:
                    if event.get("run") is None or event["run"] < run_id:
                        continue
                    run_id, announced, seen = event["run"], False, {}  # started again from the console
                    publisher = DemoPublisher(self.out)
                    self._say_over(publisher, f"  {time.strftime('%H:%M:%S')}  run {run_id} started")
                publisher(event)
                self.line_open = publisher.line_open
                status = event.get("status")
                if status not in ("queued", "running"):
                    self._say_over(publisher, f"  {time.strftime('%H:%M:%S')}  run {run_id} {status}"
                                   + (f": {event['message']}" if event.get("message") else "")
                                   + " (start it again from the console)")
                    continue
                if event.get("phase") == "stream":
                    if not announced:
                        announced, seen = True, _counters(event)
                        self._say_over(publisher, self._stream_message(publisher, event))
                        continue
                    change = _describe_change(seen, _counters(event))
                    if change:
                        seen = _counters(event)
                        self._say_over(publisher, f"  {time.strftime('%H:%M:%S')}  synced: {change}")
            time.sleep(0.5)

    def _say_over(self, publisher: DemoPublisher, text: str) -> None:
        publisher.end_line()
        self.line_open = False
        self.say(text)

    def _stream_message(self, publisher: DemoPublisher, event: dict) -> str:
        assert self.task is not None
        c = _counters(event)
        if publisher.snapshot_started is None:
            text = "The snapshot was done by an earlier run; the stream goes on from the saved position."
        else:
            elapsed = (publisher.stream_started or time.monotonic()) - publisher.snapshot_started
            read = c.get("rows_read", 0)
            text = (f"Snapshot done in {format_duration(elapsed)}: this run read {read:,}, embedded "
                    f"{c.get('rows_embedded', 0):,}, unchanged {c.get('rows_unchanged', 0):,}, failed "
                    f"{c.get('rows_failed', 0):,} ({read / elapsed if elapsed else 0:.0f} rows/s).")
        return (f"{text}\nFollowing the change stream: each change it applies is printed below. Search the "
                f"collection at {self.url}/tasks/{self.task.pk}/")

    # -- stopping ------------------------------------------------------------------------------

    def _stop_tasks(self) -> None:
        """Stop the running tasks so that each runner ends its batch and saves its checkpoint; the
        next demo starts them again."""
        running = list(SyncTask.objects.filter(desired_state=SyncTask.DesiredState.RUNNING))
        if not running:
            return
        for task in running:
            stop_task(task)
        self.state["resume_tasks"] = [t.pk for t in running if self.task is None or t.pk != self.task.pk]
        save_state(self.state)
        worker = self.children.get("worker")
        if worker is None or worker.proc.poll() is not None:
            return
        self.say("  sync     finishing the current batch and saving the checkpoint...")
        deadline = time.monotonic() + RUN_STOP_TIMEOUT
        while time.monotonic() < deadline and worker.proc.poll() is None:
            try:
                if not any(runner_alive(t.pk) for t in running):
                    break
            except Exception:
                break  # Redis is gone: nothing to wait for
            time.sleep(0.2)
        else:
            if worker.proc.poll() is None:
                self.say(f"  sync     still running after {RUN_STOP_TIMEOUT:.0f}s; stopping the worker anyway.")
        for task in running:
            run = task.runs.order_by("-pk").first()
            if run is not None:
                self.say(f"  sync     {task.name}: run {run.pk} {run.status}, {run.rows_upserted:,} rows upserted")

    def _shutdown(self) -> None:
        if "worker" in self.children:  # only a demo that got as far as its own worker stops tasks
            with contextlib.suppress(Exception):
                self._stop_tasks()
        for name in PROCESS_NAMES:
            child = self.children.pop(name, None)
            if child is None:
                continue
            if child.proc.poll() is None:
                clean = stop_process(child.proc.pid, child.proc)
                self.say(f"  {name:8} stopped (pid {child.proc.pid}){'' if clean else ', killed'}")
            self.state.get("processes", {}).pop(name, None)
            save_state(self.state)
        if self.keep_servers:
            for name, server in self.servers.servers.items():
                self.say(f"  {name:8} left running (pid {server.pid}, port {server.port}); "
                         "the next `make demo` reuses it")
        else:
            stop_servers(self.servers, self.state, self.say)
        if self.state.get("owner_pid") == os.getpid():
            self.state["owner_pid"] = None
            save_state(self.state)
        if self.task is not None:
            self.say("Stopped. `make demo` again picks up where this one left off.")


def run_web_demo(*, rows: int | None = None, keep_servers: bool = False, port: int | None = None,
                 out: IO[str] | None = None) -> None:
    """Run the demo with the console, a worker and beat until Ctrl-C (see the module docstring)."""
    try:
        WebDemo(rows=rows, keep_servers=keep_servers, port=port, out=out).run()
    except ConnectorError as exc:
        raise DemoError(str(exc)) from exc
