"""Crash safety: `manage.py run_task` killed with SIGKILL at the worst moments, then restarted.

The target must end equal to the source: no losses, no duplicates (helpers.target_rows asserts
that every key appears once).
"""

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rsync_admin.corpus import insert_rows, rows
from tasks.models import Checkpoint, SyncTask
from tasks.services import stop_task

from .helpers import source_connection, target_rows, wait_converged, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# The waits below are upper bounds for a loaded 2-core machine (a quiet one takes a fraction):
# the test asserts what the target ends up holding, never how fast it got there.

MANAGE = str(Path(__file__).resolve().parent.parent / "manage.py")


class RunTaskProcess:
    def __init__(self, task: SyncTask, env: dict, log_dir: Path) -> None:
        self.task, self.env, self.log_dir = task, env, log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"run_task-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [os.sys.executable, MANAGE, "run_task", str(self.task.pk), "--wait-lock", "30"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        stop_task(self.task)
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("run_task-*.log")))


class BackgroundWriter(threading.Thread):
    """Inserts, updates and deletes rows while the runner is killed and restarted."""

    def __init__(self, conn, *, soft_deletes: bool = False) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.soft_deletes = soft_deletes  # polling sees deletes only as a marked column
        self.halt = threading.Event()
        self.next_id = 100_000
        self.rng = random.Random(42)

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.halt.is_set():
                insert_rows(self.conn, "docs", rows(2, start_id=self.next_id))
                self.next_id += 2
                cur.execute("UPDATE docs SET title = CONCAT(title, '+') WHERE id = %s", (self.rng.randint(1, 400),))
                victim = self.rng.randint(1, 400)
                if self.soft_deletes:
                    cur.execute("UPDATE docs SET deleted_at = NOW() WHERE id = %s", (victim,))
                else:
                    cur.execute("DELETE FROM docs WHERE id = %s", (victim,))
                # About 20 changes a second: steady pressure a loaded 2-core machine still follows.
                time.sleep(0.2)
        self.conn.close()


@pytest.mark.parametrize("source_kind,store_kind,capture", [
    ("mysql", "milvus", "log"), ("mysql", "qdrant", "log"), ("postgresql", "milvus", "log"),
    ("mysql", "milvus", "poll"),
])
def test_sigkill_mid_snapshot_mid_stream_and_mid_transaction(
    make_task, source_db, subprocess_env, tmp_path, capture
):
    _, conn = source_db
    polling = capture == "poll"  # make_task adds the deleted_at column and the polling settings
    # The overlap must outlast the longest transaction (the 500-row one below commits seconds
    # after its first rows were stamped on a loaded machine): rows stamped earlier than the
    # position minus the overlap would never be read.
    task = make_task(400, batch_size=50, **({"overlap_seconds": 60.0} if polling else {}))
    process = RunTaskProcess(task, subprocess_env, tmp_path)
    writer = BackgroundWriter(source_connection(task.source), soft_deletes=polling)

    # 1. Mid-snapshot.
    process.start()
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_rows >= 100, timeout=600, message="snapshot")
    writer.start()
    process.kill()
    checkpoint = Checkpoint.objects.get(task=task)
    assert checkpoint.snapshot_state == Checkpoint.SnapshotState.RUNNING, "killed too late: snapshot already done"

    # 2. Mid-stream, with writes going on.
    process.start()
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == Checkpoint.SnapshotState.DONE,
               timeout=900, message="snapshot after restart")
    position_after_snapshot = Checkpoint.objects.get(task=task).stream_position
    wait_until(lambda: Checkpoint.objects.get(task=task).stream_position != position_after_snapshot,
               timeout=300, message="stream progress")
    time.sleep(1)
    process.kill()

    # 3. Inside a 500-row transaction (written in slices, checkpointed only at its end).
    process.start()
    big = rows(500, start_id=200_000)
    with conn.cursor() as cur:
        cur.execute("BEGIN")  # as SQL: the same on both kinds of connection
        insert_rows(conn, "docs", big, batch=50)
        if polling:
            cur.execute("UPDATE docs SET deleted_at = NOW() WHERE id BETWEEN 300 AND 320")
        else:
            cur.execute("DELETE FROM docs WHERE id BETWEEN 300 AND 320")
        cur.execute("COMMIT")

    def partly_written() -> bool:
        present = sum(1 for key in target_rows(task) if 200_000 <= key < 200_500)
        return 0 < present < 500

    wait_until(partly_written, timeout=600, interval=0.05, message="a partly written transaction")
    process.kill()

    # Restart once more and let everything settle.
    process.start()
    time.sleep(2)
    writer.halt.set()
    writer.join(timeout=30)
    # Polling: the target must hold every row not marked deleted, and none that is.
    wait_converged(task, conn, timeout=900, where="deleted_at IS NULL" if polling else "")
    assert process.stop() == 0, process.output()
    assert "Traceback" not in process.output()
