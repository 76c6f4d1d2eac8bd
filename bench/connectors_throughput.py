#!/usr/bin/env python
"""Connector throughput benchmark: each source/target pair against the model's own speed.

Starts private MariaDB, PostgreSQL, Redis and Milvus Lite servers in one temporary folder (Qdrant
runs in local mode in a folder inside it), loads the same `--rows` rows of real text (stdlib
docstrings, template "{title}\\n\\n{body}") into MariaDB and PostgreSQL, and measures for each pair
(mysql->milvus, postgresql->milvus, mysql->qdrant), in one run and on the same texts:

  (a) the raw `model.encode` rate on exactly the texts the snapshot embeds, in the model batches
      the embedder makes of each snapshot chunk (texts of similar length), once right before and
      once right after the pair's snapshot (a pass between two pairs serves as the "after" of one
      and the "before" of the next when both sources render the same texts, which is checked);
  (b) a full snapshot through `TaskRunner` (mode "full", in this process, fresh collection) and
      the ratio b/a;
  (c) commit-to-written latency p50/p99/max under a steady insert load (20 rows/s for
      `--latency-seconds`) while a full+incremental runner streams in a thread, polling the target
      by key every ~20 ms through `target_connector`.

    .venv/bin/python bench/connectors_throughput.py            # defaults: 2000 rows, 30 s of load
    .venv/bin/python bench/connectors_throughput.py --quick    # 200 rows, 10 s (smoke run)

Results: a table on stdout and JSON in bench/results/connectors_throughput.json (see
bench/CONNECTORS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    PAYLOAD,
    RESULTS,
    ROOT,
    T0,
    TEMPLATE,
    configure_environment,
    machine_info,
    make_task,
    percentile,
    rnd,
    say,
    setup_django,
)

DEFAULT_OUTPUT = RESULTS / "connectors_throughput.json"
QUICK_OUTPUT = RESULTS / "connectors_throughput.quick.json"  # ignored by git (bench/.gitignore)
DATABASE = "bench"
POLL_INTERVAL_S = 0.02
LATENCY_RATE = 20.0  # rows per second
LATENCY_INITIAL_ROWS = 50  # in the latency table before its runner starts (a short snapshot)
DRAIN_TIMEOUT_S = 120.0  # after the load: how long to wait for the last rows


@dataclass(frozen=True)
class Pair:
    source: str  # "mysql" | "postgresql"
    target: str  # "milvus" | "qdrant"

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def slug(self) -> str:
        return f"{self.source}_{self.target}"


ALL_PAIRS = [Pair("mysql", "milvus"), Pair("postgresql", "milvus"), Pair("mysql", "qdrant")]

# -- CPU accounting: the machine is shared ---------------------------------------------------------


class CpuWindow:
    """Wall time, CPU of this process and of the private servers, and of the whole machine."""

    def __init__(self, servers: dict[str, int]) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.servers = {}
        for name, pid in servers.items():
            with contextlib.suppress(psutil.Error):
                self.servers[name] = psutil.Process(pid)

    def _tree_cpu(self, proc) -> float:
        """A server's CPU including its children, live ones and those it has reaped (backends)."""
        total = 0.0
        with contextlib.suppress(self.psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(self.psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
        return total

    def _own_cpu(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system

    def __enter__(self) -> CpuWindow:
        self.load_start = os.getloadavg()
        self.machine_start = self.psutil.cpu_times()
        self.own_start = self._own_cpu()
        self.servers_start = {k: self._tree_cpu(p) for k, p in self.servers.items()}
        self.wall_start = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self.wall_start
        self.own = self._own_cpu() - self.own_start
        self.server_cpu = {k: self._tree_cpu(p) - self.servers_start[k] for k, p in self.servers.items()}
        m0, m1 = self.machine_start, self.psutil.cpu_times()
        idle = (m1.idle - m0.idle) + (getattr(m1, "iowait", 0.0) - getattr(m0, "iowait", 0.0))
        self.machine_busy = (sum(m1) - sum(m0)) - idle
        self.load_end = os.getloadavg()

    @property
    def ours(self) -> float:
        return self.own + sum(self.server_cpu.values())

    def report(self) -> dict:
        cores = os.cpu_count() or 1
        others = max(self.machine_busy - self.ours, 0.0)
        return {
            "wall_s": rnd(self.wall),
            "bench_process_cpu_s": rnd(self.own),
            "server_cpu_s": {k: rnd(v) for k, v in self.server_cpu.items()},
            "machine_busy_cpu_s": rnd(self.machine_busy),
            "other_processes_cpu_s": rnd(others),
            "other_processes_share_of_machine": rnd(others / (self.wall * cores), 3) if self.wall else None,
            "loadavg_1m_start": rnd(self.load_start[0], 2),
            "loadavg_1m_end": rnd(self.load_end[0], 2),
        }


class WarningLog(logging.Handler):
    """Every warning logged while a phase runs (a retry inside a timed run is part of its time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}"[:300])

    def __enter__(self) -> WarningLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)

    def report(self) -> dict:
        return {"warnings_logged": len(self.messages), "warnings": self.messages[:10]}


# -- sources, stores, tasks ------------------------------------------------------------------------


def source_admin(kind: str, server):
    """A new autocommit connection to the `bench` database of a private server."""
    from rsync_admin import devservers

    if kind == "postgresql":
        return devservers.postgres_admin(server, DATABASE)
    return devservers.mariadb_root(server, DATABASE)


def pipeline_chunks(task) -> list[tuple[int, list[str]]]:
    """The texts a snapshot of `task` embeds, chunk by chunk: read through the task's source
    connector, rendered and de-duplicated per chunk exactly as the runner and
    `BatchProcessor.prepare` do (one embedder call per chunk of `task.batch_size` rows)."""
    from datasources.connectors import source_connector
    from datasources.connectors.base import normalize_value
    from tasks.pipeline import TaskMapping, text_hash

    source = source_connector(task.source)
    mapping = TaskMapping.build(task, source.describe_table(task.table))
    conn = source.connect()
    chunks = []
    try:
        last_key = None
        while True:
            rows = source.read_chunk(conn, mapping.table, after_key=last_key, limit=task.batch_size)
            if not rows:
                break
            last_key = [normalize_value(rows[-1][k]) for k in mapping.key_columns]
            unique: dict[str, str] = {}
            for row in rows:
                text = mapping.render(row)
                unique.setdefault(text_hash(text), text)
            chunks.append((len(rows), list(unique.values())))
    finally:
        conn.close()
    return chunks


def chunks_digest(chunks) -> str:
    digest = hashlib.sha256()
    for n, texts in chunks:
        digest.update(f"{n}\0".encode())
        for text in texts:
            digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


# -- (a) raw encode ---------------------------------------------------------------------------------


def encode_pass(embedder, chunks, servers: dict[str, int], label: str, every: float = 30.0) -> dict:
    """`model.encode` on each chunk's model batches, as `SentenceTransformerEmbedder._encode` makes
    them (texts of similar length; made before the clock starts)."""
    rows = sum(n for n, _ in chunks)
    times: list[float] = []
    done, last = 0, time.monotonic()
    with CpuWindow(servers) as cpu:
        for n, texts in chunks:
            batches = [[texts[i] for i in batch] for batch in embedder.model_batches(texts)]
            t = time.perf_counter()
            embedder.run_model(batches)
            times.append(time.perf_counter() - t)
            done += n
            if time.monotonic() - last >= every:
                last = time.monotonic()
                elapsed = sum(times)
                say(f"  {label}: {done}/{rows} rows, {done / elapsed:.1f} rows/s")
    seconds = sum(times)
    return {
        "label": label, "rows": rows, "texts_embedded": sum(len(t) for _, t in chunks), "chunks": len(chunks),
        "seconds": rnd(seconds), "rows_per_s": rnd(rows / seconds, 2),
        "chunk_seconds_p50": rnd(percentile(times, 50)), "chunk_seconds_max": rnd(max(times)),
        "cpu_s_per_1000_rows": rnd(1000 * cpu.own / rows, 2),
        "cpu": cpu.report(),
    }


# -- (b) snapshot -----------------------------------------------------------------------------------


class ProgressPrinter:
    def __init__(self, label: str, every: float = 30.0) -> None:
        self.label, self.every, self.last = label, every, time.monotonic()

    def __call__(self, payload: dict) -> None:
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            say(f"  {self.label}: {payload.get('phase')} {payload.get('done')}/{payload.get('total') or '?'} rows, "
                f"{payload.get('rate') or 0:.1f} rows/s")


def run_snapshot(task, servers: dict[str, int], label: str) -> dict:
    from datasources.connectors import target_connector
    from tasks.runner import TaskRunner
    from tasks.services import mark_running

    mark_running(task)
    with WarningLog() as warnings, CpuWindow(servers) as cpu:
        start = time.perf_counter()
        run = TaskRunner(task.pk, publishers=[ProgressPrinter(label)]).run()
        wall = time.perf_counter() - start
    target = target_connector(task.store)
    try:
        points = target.count(task.collection)
        target.drop_collection(task.collection)  # Qdrant local mode keeps collections in this process
    finally:
        target.close()
    return {
        "mode": "full", "fresh_collection": True, "status": run.status, "error": run.error,
        "rows": run.rows_read, "rows_embedded": run.rows_embedded, "rows_upserted": run.rows_upserted,
        "rows_failed": run.rows_failed, "points_in_collection": points,
        "wall_s": rnd(wall), "rows_per_s": rnd(run.rows_read / wall, 2) if wall else None,
        "cpu_s_per_1000_rows": rnd(1000 * cpu.ours / run.rows_read, 2) if run.rows_read else None,
        "cpu": cpu.report(),
        **warnings.report(),
        "_cpu_ours": cpu.ours,
    }


# -- (c) latency ------------------------------------------------------------------------------------


class Poller(threading.Thread):
    """Asks the target for the pending keys every ~20 ms (through `target_connector`, as the product
    reads it) and notes when each key first came back. The time is taken when the call returns, so
    each latency is an upper bound by up to one poll."""

    def __init__(self, store, collection: str) -> None:
        super().__init__(name="bench-poller", daemon=True)
        from datasources.connectors import target_connector

        self.target = target_connector(store)
        self.collection = collection
        self.pending: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        self.query_s: list[float] = []
        self.errors: list[str] = []
        self.cpu_s = 0.0  # this thread's own CPU (client-side work; a gRPC client's C threads are not in it)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def expect(self, key: int, committed_at: float) -> None:
        with self.lock:
            self.pending[key] = committed_at

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                begin = time.monotonic()
                with self.lock:
                    keys = list(self.pending)
                if keys:
                    try:
                        found = self.target.fetch(self.collection, keys, [])
                    except Exception as exc:  # noted; the next poll tries again
                        self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                        found = {}
                    now = time.monotonic()
                    self.query_s.append(now - begin)
                    with self.lock:
                        for key in found:
                            if key in self.pending:
                                self.seen[key] = now - self.pending.pop(key)
                time.sleep(max(POLL_INTERVAL_S - (time.monotonic() - begin), 0.001))
        finally:
            self.cpu_s = time.thread_time()
            self.target.close()

    def wait_seen(self, key: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if key in self.seen:
                    return self.seen[key]
            time.sleep(0.05)
        return None


def run_latency(pair: Pair, source, store, server, servers: dict[str, int], *, items: list[dict],
                seconds: float, rate: float) -> dict:
    """A full+incremental runner in a thread; `items[:LATENCY_INITIAL_ROWS]` are there before it
    starts, one more row warms the stream up, then the rest are inserted at `rate` rows/s, each in
    its own autocommitted transaction, timed when its COMMIT returns."""
    from rsync_admin.corpus import create_docs_table, insert_rows
    from tasks.models import SyncRun
    from tasks.runner import TaskRunner
    from tasks.services import mark_running

    table = f"live_{pair.slug}"
    initial, warm, load = items[:LATENCY_INITIAL_ROWS], items[LATENCY_INITIAL_ROWS], items[LATENCY_INITIAL_ROWS + 1:]
    conn = source_admin(pair.source, server)
    create_docs_table(conn, table, 0)
    insert_rows(conn, table, initial)
    if pair.source == "postgresql":
        # The private cluster runs with synchronous_commit=off (speed); then COMMIT returns before
        # the WAL is flushed, and logical decoding only sends flushed WAL, so up to
        # wal_writer_delay (200 ms) would be counted before the change even left the server.
        # This session commits as a production server does by default.
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
    task = make_task(source, store, name=f"bench-live-{pair.slug}".replace("_", "-"), table=table,
                     mode="full+incremental")
    mark_running(task)
    stop = threading.Event()
    outcome: dict = {}

    def runner_thread() -> None:
        from django.db import connection

        try:
            outcome["run"] = TaskRunner(task.pk, stop_event=stop, lock_wait=30).run()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    warnings = WarningLog()
    logging.getLogger().addHandler(warnings)
    thread = threading.Thread(target=runner_thread, name="bench-runner", daemon=True)
    thread.start()
    poller = None
    try:
        deadline = time.monotonic() + 300
        while not SyncRun.objects.filter(task=task, phase="stream").exists():
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the latency runner never reached the stream phase: {outcome}")
            time.sleep(0.2)
        poller = Poller(store, task.collection)
        poller.start()
        insert_rows(conn, table, [warm])
        poller.expect(warm["id"], time.monotonic())
        if poller.wait_seen(warm["id"], timeout=120) is None:
            raise RuntimeError(f"the warm-up row never reached {pair.target}")
        time.sleep(1.0)
        count = len(load)
        say(f"  {pair.name}: streaming; inserting {count} rows at {rate:g} rows/s for {seconds:g}s")
        columns = ("id", "name", "module", "kind", "title", "body", "stars")
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
        lateness: list[float] = []
        with CpuWindow(servers) as cpu:
            start = time.monotonic()
            last_print = start
            with conn.cursor() as cur:
                for i, row in enumerate(load):
                    due = start + i / rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    lateness.append(max(time.monotonic() - due, 0.0))
                    cur.execute(sql, tuple(row[c] for c in columns))  # autocommit: returns after COMMIT
                    poller.expect(row["id"], time.monotonic())
                    if time.monotonic() - last_print >= 10:
                        last_print = time.monotonic()
                        with poller.lock:
                            seen = list(poller.seen.values())
                        say(f"  {pair.name}: {i + 1}/{count} inserted, {len(seen)} written, "
                            f"p50 {percentile(seen, 50) or 0:.3f}s p99 {percentile(seen, 99) or 0:.3f}s")
            insert_wall = time.monotonic() - start
            with poller.lock:
                pending_at_load_end = len(poller.pending)
            drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < drain_deadline:
                with poller.lock:
                    if not poller.pending:
                        break
                time.sleep(0.1)
            drain_s = time.monotonic() - start - insert_wall
    finally:
        if poller is not None:
            poller.stop_event.set()
            poller.join(30)
        stop.set()
        thread.join(120)
        conn.close()
        logging.getLogger().removeHandler(warnings)
    if "error" in outcome:
        raise outcome["error"]
    run = outcome.get("run")
    with poller.lock:
        latencies = [poller.seen[r["id"]] for r in load if r["id"] in poller.seen]
        missing = len(poller.pending)
    half = len(latencies) // 2
    return {
        "table": table, "mode": "full+incremental", "initial_rows": len(initial),
        "rows_inserted": count, "insert_rate_rows_per_s": rate, "insert_seconds": seconds,
        "achieved_insert_rate_rows_per_s": rnd(count / insert_wall, 2),
        "insert_schedule_lateness_p99_s": rnd(percentile(lateness, 99), 4),
        "insert_session": "autocommit, one row per transaction"
                          + (", synchronous_commit=on" if pair.source == "postgresql" else ""),
        "samples": len(latencies), "missing": missing,
        "p50_s": rnd(percentile(latencies, 50), 4), "p90_s": rnd(percentile(latencies, 90), 4),
        "p99_s": rnd(percentile(latencies, 99), 4), "max_s": rnd(max(latencies), 4) if latencies else None,
        "mean_s": rnd(sum(latencies) / len(latencies), 4) if latencies else None,
        "p50_first_half_s": rnd(percentile(latencies[:half], 50), 4),
        "p50_second_half_s": rnd(percentile(latencies[half:], 50), 4),
        "rows_not_yet_written_when_load_ended": pending_at_load_end,
        "written_during_load_rows_per_s": rnd((count - pending_at_load_end) / insert_wall, 2),
        "written_during_load_note": "rows of the load written by the time the last insert returned / load "
                                    "duration: below the insert rate, a backlog grows and the latencies are "
                                    "mostly queueing",
        "drain_after_load_s": rnd(drain_s),
        "poll_interval_s": POLL_INTERVAL_S,
        "poll_call_p50_s": rnd(percentile(poller.query_s, 50), 4),
        "poll_call_p99_s": rnd(percentile(poller.query_s, 99), 4),
        "poll_calls": len(poller.query_s), "poller_thread_cpu_s": rnd(poller.cpu_s),
        "poll_errors": poller.errors[:5], "poll_error_count": len(poller.errors),
        "poller": "target_connector(store).fetch(collection, keys, []) in a thread of this process"
                  + ("; shares the local folder's client and lock with the runner" if pair.target == "qdrant"
                     else ""),
        "run_status": run.status if run else None, "run_error": run.error if run else None,
        "run_rows_embedded": run.rows_embedded if run else None,
        "cpu": cpu.report(),
        **warnings.report(),
    }


# -- reporting --------------------------------------------------------------------------------------


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table_lines(result: dict) -> list[str]:
    header = ("pair", "encode before", "encode after", "snapshot", "b/a", "latency p50", "p99", "max",
              "written/missing", "kept up", "other CPU (b)", "(c)")
    units = ("", "rows/s", "rows/s", "rows/s", "", "s", "s", "s", "", "rows/s", "share", "share")
    rows = []
    for name, r in result["pairs"].items():
        enc, snap, lat = r.get("encode") or {}, r.get("snapshot") or {}, r.get("latency") or {}
        other = (snap.get("cpu") or {}).get("other_processes_share_of_machine")
        other_c = (lat.get("cpu") or {}).get("other_processes_share_of_machine")
        kept = f"{lat['written_during_load_rows_per_s']:.1f}/{lat['insert_rate_rows_per_s']:g}" if lat else "-"
        rows.append((
            name, fmt(enc.get("before_rows_per_s")), fmt(enc.get("after_rows_per_s")), fmt(snap.get("rows_per_s")),
            fmt(snap.get("ratio_to_encode"), 3), fmt(lat.get("p50_s"), 3), fmt(lat.get("p99_s"), 3),
            fmt(lat.get("max_s"), 3), f"{lat['samples']}/{lat['missing']}" if lat else "-", kept,
            f"{other:.0%}" if other is not None else "-", f"{other_c:.0%}" if other_c is not None else "-",
        ))
    widths = [max(len(str(x[i])) for x in [header, units, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        return "  ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    out = [line(header), line(units), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out.extend(line(r) for r in rows)
    sizes = result["sizes"]
    out.append("")
    out.append(f"(a),(b): {sizes['rows']:,} rows, template {TEMPLATE!r}, chunks of {sizes['task_batch_size_rows']} "
               f"rows, encode batch {sizes['embed_batch_size_texts']}; b/a uses both encode passes pooled.")
    out.append(f"(c): {sizes['latency_rate_rows_per_s']:g} rows/s for {sizes['latency_seconds']:g} s, "
               f"commit returned -> key returned by a poll every {POLL_INTERVAL_S * 1000:.0f} ms; "
               "'kept up' = rows written during the load per second / rows inserted per second.")
    out.append("other CPU = share of the machine's CPUs used by processes outside the benchmark during (b) and (c).")
    for name, r in result["pairs"].items():
        for phase in ("snapshot", "latency"):
            part = r.get(phase) or {}
            if part.get("warnings"):
                out.append(f"note: {name} {phase} logged {part['warnings_logged']} warning(s), first: "
                           f"{part['warnings'][0][:150]}")
    m = result["machine"]
    out.append(f"machine: {m['cpu_count']} CPUs, load average (1/5/15 min) {m['loadavg_at_start']} at start, "
               f"{m.get('loadavg_at_end')} at end.")
    return out


# -- main -------------------------------------------------------------------------------------------


def parse_pairs(text: str | None) -> list[Pair]:
    if not text:
        return list(ALL_PAIRS)
    known = {p.name: p for p in ALL_PAIRS} | {p.slug: p for p in ALL_PAIRS} | {
        f"{p.source}-{p.target}": p for p in ALL_PAIRS}
    pairs = []
    for part in (x.strip().lower() for x in text.split(",")):
        if not part:
            continue
        if part not in known:
            raise SystemExit(f"unknown pair {part!r}; choose from {', '.join(p.name for p in ALL_PAIRS)}")
        if known[part] not in pairs:
            pairs.append(known[part])
    return pairs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="rows for (a) and (b) (default 2000; --quick 200)")
    parser.add_argument("--latency-seconds", type=float, help="insert load duration for (c) (default 30; --quick 10)")
    parser.add_argument("--pairs", help="comma-separated, e.g. mysql->milvus,postgresql-milvus (default: all three)")
    parser.add_argument("--quick", action="store_true", help="200 rows and 10 s of load (smoke run)")
    parser.add_argument("--output", type=Path, help=f"JSON path (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temporary folder")
    args = parser.parse_args(argv)
    args.rows = args.rows or (200 if args.quick else 2000)
    args.latency_seconds = args.latency_seconds or (10.0 if args.quick else 30.0)
    args.output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    args.pairs = parse_pairs(args.pairs)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from rsync_admin import devservers

    kinds = {p.source for p in args.pairs} | {p.target for p in args.pairs}
    workdir = Path(tempfile.mkdtemp(prefix="rsync-bench-connectors-"))
    if os.geteuid() == 0:
        os.chmod(workdir, 0o711)  # PostgreSQL runs as `postgres` and must reach its folder inside
    servers: dict = {}
    try:
        say(f"starting private servers ({', '.join(sorted(kinds - {'qdrant'}))}, redis) in {workdir}")
        servers["redis"] = devservers.start_redis(workdir / "redis")
        if "mysql" in kinds:
            servers["mariadb"] = devservers.start_mariadb(workdir / "mariadb")
        if "postgresql" in kinds:
            servers["postgres"] = devservers.start_postgres(workdir / "postgres")
        if "milvus" in kinds:
            servers["milvus"] = devservers.start_milvus(workdir / "milvus")
        configure_environment(workdir, servers["redis"].port, embed_cache_ttl=0)  # every row embedded
        setup_django()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        return run_benchmark(args, workdir, servers)
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run_benchmark(args, workdir: Path, servers: dict) -> int:
    from django.conf import settings

    from datasources.embedders import get_embedder
    from datasources.services import save_source, save_store
    from rsync_admin import devservers
    from rsync_admin.corpus import create_docs_table
    from rsync_admin.corpus import rows as corpus_rows
    from tasks.models import SyncTask

    pids = {name: s.pid for name, s in servers.items()}
    server_of = {"mysql": servers.get("mariadb"), "postgresql": servers.get("postgres")}
    result: dict = {
        "benchmark": "connectors_throughput",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "bench/connectors_throughput.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine_info(),
    }

    # Sources and stores, through the services as a person would set them up.
    sources, stores, server_versions = {}, {}, {}
    if server_of["mysql"]:
        admin = devservers.mariadb_root(server_of["mysql"])
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
            cur.execute("SELECT VERSION()")
            server_versions["mariadb"] = cur.fetchone()[0]
        admin.close()
        sources["mysql"] = save_source(name="bench-mysql", kind="mysql", host="127.0.0.1",
                                       port=server_of["mysql"].port, database=DATABASE, user="root", password="")
    if server_of["postgresql"]:
        pg = server_of["postgresql"]
        admin = devservers.postgres_admin(pg)
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{DATABASE}"')
            cur.execute("SHOW server_version")
            server_versions["postgresql"] = cur.fetchone()[0]
        admin.close()
        sources["postgresql"] = save_source(name="bench-postgresql", kind="postgresql", host="127.0.0.1",
                                            port=pg.port, database=DATABASE, user=pg.extra["user"],
                                            password=pg.extra["password"])
    if "milvus" in servers:
        stores["milvus"] = save_store(name="bench-milvus", kind="milvus",
                                      uri=f"http://127.0.0.1:{servers['milvus'].port}")
    if any(p.target == "qdrant" for p in args.pairs):
        stores["qdrant"] = save_store(name="bench-qdrant", kind="qdrant", uri=str(workdir / "qdrant" / "store"))

    say("loading the embedding model")
    t = time.perf_counter()
    embedder = get_embedder()
    embedder.encode(["warm up the model", "and its first-call allocations"])
    model_load_s = time.perf_counter() - t

    # The same rows in every source.
    loads = {}
    for kind in sources:
        say(f"loading {args.rows:,} rows into {kind}")
        conn = source_admin(kind, server_of[kind])
        t = time.perf_counter()
        create_docs_table(conn, "docs", args.rows)
        loads[kind] = rnd(time.perf_counter() - t)
        conn.close()
    snapshot_tasks = {
        p: make_task(sources[p.source], stores[p.target], name=f"bench-snap-{p.slug}".replace("_", "-"),
                     table="docs", mode="full")
        for p in args.pairs
    }
    chunks_by_source, digest_by_source = {}, {}
    for p, task in snapshot_tasks.items():
        if p.source not in chunks_by_source:
            chunks_by_source[p.source] = pipeline_chunks(task)
            digest_by_source[p.source] = chunks_digest(chunks_by_source[p.source])
    same_texts = len(set(digest_by_source.values())) == 1
    any_chunks = next(iter(chunks_by_source.values()))
    texts = [t for _, ts in any_chunks for t in ts]
    latency_count = int(round(args.latency_seconds * LATENCY_RATE))
    # (c) inserts texts the snapshot did not see (the rows after the first --rows of the corpus),
    # the same ones for every pair.
    latency_items = corpus_rows(args.rows + LATENCY_INITIAL_ROWS + 1 + latency_count)[args.rows:]
    load_texts = [TEMPLATE.format(**r).strip() for r in latency_items[LATENCY_INITIAL_ROWS + 1:]]

    result["settings"] = {
        "embedding_model": embedder.name, "embedding_dimension": embedder.dimension,
        "embed_device": str(embedder.model.device), "model_load_s": rnd(model_load_s),
        "embed_cache": "off (RSYNC_EMBED_CACHE_TTL=0)", "django_debug": settings.DEBUG,
        "binlog_heartbeat_s": settings.RSYNC_BINLOG_HEARTBEAT, "payload_columns": PAYLOAD,
        "server_versions": server_versions,
        "postgres_server_settings": "fsync=off, synchronous_commit=off, full_page_writes=off, wal_level=logical "
                                    "(rsync_admin.devservers.start_postgres)",
        "qdrant": "local mode (qdrant-client embedded engine) in a folder of the temporary directory",
        "corpus": "stdlib docstrings (rsync_admin.corpus.rows)",
    }
    result["sizes"] = {
        "rows": args.rows, "template": TEMPLATE,
        "task_batch_size_rows": SyncTask._meta.get_field("batch_size").default,
        "embed_batch_size_texts": settings.RSYNC_EMBED_BATCH,
        "embed_token_budget": settings.RSYNC_EMBED_TOKEN_BUDGET,
        "snapshot_chunks": len(any_chunks), "texts_embedded_per_pass": len(texts),
        "text_chars_mean": rnd(sum(map(len, texts)) / len(texts), 1),
        "text_chars_p50": percentile([len(x) for x in texts], 50), "text_chars_max": max(map(len, texts)),
        "same_texts_in_every_source": same_texts, "texts_sha256_by_source": digest_by_source,
        "table_load_s": loads,
        "latency_seconds": args.latency_seconds, "latency_rate_rows_per_s": LATENCY_RATE,
        "latency_initial_rows": LATENCY_INITIAL_ROWS, "latency_rows_inserted": latency_count,
        "latency_text_chars_mean": rnd(sum(map(len, load_texts)) / len(load_texts), 1) if load_texts else None,
        "pairs": [p.name for p in args.pairs],
    }
    result["units"] = {
        "_rows_per_s": "rows per second", "_s": "seconds", "_cpu_s": "CPU seconds (user+system)",
        "_mib": "MiB (2^20 bytes)", "_chars": "characters", "share": "fraction of all CPUs over the phase's wall time",
        "ratio": "dimensionless",
    }
    if not same_texts:
        say("warning: the sources render different texts; each pair gets its own encode passes")

    # (a) and (b): encode, snapshot, encode, snapshot, ... each snapshot between two encode passes.
    result["encode_passes"] = []
    result["pairs"] = {}
    previous: tuple[str, dict] | None = None  # (texts digest, the last pass)
    for p in args.pairs:
        chunks, digest = chunks_by_source[p.source], digest_by_source[p.source]
        if previous is None or previous[0] != digest:
            say(f"(a) raw model.encode on the {args.rows:,} rows' texts ({p.source}), before {p.name}")
            before = encode_pass(embedder, chunks, pids, f"encode before {p.name}")
            result["encode_passes"].append(before)
            say(f"(a) {before['rows_per_s']} rows/s")
        else:
            before = previous[1]
        say(f"(b) {p.name}: full snapshot of {args.rows:,} rows through TaskRunner")
        snap = run_snapshot(snapshot_tasks[p], pids, f"snapshot {p.name}")
        if snap["status"] != "succeeded" or snap["points_in_collection"] != args.rows:
            raise RuntimeError(f"{p.name} snapshot did not complete: {snap['status']} {snap['error']!r}, "
                               f"{snap['points_in_collection']} points")
        say(f"(b) {p.name}: {snap['rows_per_s']} rows/s in {snap['wall_s']} s")
        say(f"(a) raw model.encode again, after {p.name}")
        after = encode_pass(embedder, chunks, pids, f"encode after {p.name}")
        result["encode_passes"].append(after)
        say(f"(a) {after['rows_per_s']} rows/s")
        previous = (digest, after)
        pooled = 2 * args.rows / (before["seconds"] + after["seconds"])
        enc_cpu_per_row = (before["cpu_s_per_1000_rows"] + after["cpu_s_per_1000_rows"]) / 2000
        snap_cpu_per_row = snap.pop("_cpu_ours") / snap["rows"]
        snap.update({
            "ratio_to_encode": rnd(snap["rows_per_s"] / pooled, 4),
            "ratio_to_encode_before": rnd(snap["rows_per_s"] / before["rows_per_s"], 4),
            "ratio_to_encode_after": rnd(snap["rows_per_s"] / after["rows_per_s"], 4),
            "ratio_cpu_normalised": rnd(enc_cpu_per_row / snap_cpu_per_row, 4),
            "ratio_cpu_normalised_note": "raw encode CPU per row (this process) / snapshot CPU per row (this process "
                                         "and the private servers): b/a if CPU were the only limit and nothing "
                                         "else ran",
        })
        result["pairs"][p.name] = {
            "source": p.source, "target": p.target,
            "encode": {
                "template": TEMPLATE, "rows": args.rows, "texts_embedded": before["texts_embedded"],
                "before_pass": before["label"], "after_pass": after["label"],
                "before_rows_per_s": before["rows_per_s"], "after_rows_per_s": after["rows_per_s"],
                "rows_per_s": rnd(pooled, 2),
                "rows_per_s_note": "both passes pooled: 2 x rows / (seconds before + seconds after)",
                "call": "SentenceTransformer.encode(one model batch, normalize_embeddings=True) for each batch of "
                        "similar length that SentenceTransformerEmbedder.model_batches makes of a snapshot chunk, "
                        "texts read and rendered from the pair's source as the runner does",
            },
            "snapshot": snap,
        }

    # (c) latency, pair by pair.
    for p in args.pairs:
        say(f"(c) {p.name}: commit-to-written latency, {LATENCY_RATE:g} rows/s for {args.latency_seconds:g} s")
        lat = run_latency(p, sources[p.source], stores[p.target], server_of[p.source], pids,
                          items=latency_items, seconds=args.latency_seconds, rate=LATENCY_RATE)
        result["pairs"][p.name]["latency"] = lat
        say(f"(c) {p.name}: p50 {lat['p50_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s, "
            f"{lat['samples']} written, {lat['missing']} missing")

    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_wall_s"] = rnd(time.monotonic() - T0, 1)
    lines = table_lines(result)
    result["table"] = lines
    print()
    print("\n".join(lines))
    print()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
