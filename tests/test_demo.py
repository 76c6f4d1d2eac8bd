"""`make demo` end to end: `manage.py demo` as a newcomer runs it, then Ctrl-C, then again.

The demo starts its own private MariaDB, Redis and Milvus Lite, a web process, a worker and beat;
the test drives it only from outside, as a user would: its terminal output, the REST API of the
console it brings up, SIGINT, and the pids it records in RUN_DIR/demo.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from rsync_admin.devservers import free_port

pytestmark = pytest.mark.slow

BASE_DIR = Path(__file__).resolve().parent.parent
ROWS = 40


class DemoProcess:
    """`manage.py demo` in a terminal of its own: output collected line by line."""

    def __init__(self, run_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RSYNC_", "REDIS_", "CELERY_", "DJANGO_", "DATABASE_"))}
        env.update({
            "RSYNC_RUN_DIR": str(run_dir),
            "DATABASE_URL": f"sqlite:///{run_dir / 'db.sqlite3'}",
            "RSYNC_ENV_FILE": str(run_dir / "no.env"),
            "PYTHONUNBUFFERED": "1",
        })
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--rows", str(ROWS), "--port", str(port)],
            cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            # Progress lines are redrawn with carriage returns: keep each state as its own line.
            self.lines.extend(part for part in line.rstrip("\n").split("\r") if part)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                match = re.search(pattern, self.output)
                if match:
                    return match
                pytest.fail(f"the demo exited with {self.proc.returncode} before {pattern!r}:\n{self.output}")
            time.sleep(0.3)
        pytest.fail(f"no {pattern!r} within {timeout:.0f}s:\n{self.output}")

    def interrupt(self, timeout: float = 180.0) -> int:
        """Ctrl-C, as in a terminal: SIGINT to the demo; it stops what it started."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the demo did not stop within {timeout:.0f}s of Ctrl-C:\n{self.output}")
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def recorded_pids(run_dir: Path) -> dict[str, int]:
    state = json.loads((run_dir / "demo.json").read_text())
    pids = {name: record["pid"] for name, record in state["servers"].items() if record.get("pid")}
    pids.update({name: record["pid"] for name, record in (state.get("processes") or {}).items()
                 if record.get("pid")})
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not collected it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def kill_recorded(run_dir: Path) -> None:
    """After a failed test: stop whatever the demo left behind."""
    try:
        pids = recorded_pids(run_dir)
    except (OSError, ValueError, KeyError):
        return
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def api_session(url: str, password: str) -> requests.Session:
    answer = requests.post(f"{url}/api/auth/token/", data={"username": "admin", "password": password}, timeout=30)
    assert answer.status_code == 200, answer.text
    session = requests.Session()
    session.headers["Authorization"] = f"Token {answer.json()['token']}"
    return session


def latest_run(session: requests.Session, url: str, task_id: int) -> dict | None:
    answer = session.get(f"{url}/api/runs/", params={"task": task_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    runs = body["results"] if isinstance(body, dict) else body
    return max(runs, key=lambda run: run["id"]) if runs else None


def test_demo_brings_everything_up_syncs_stops_on_ctrl_c_and_picks_up_again(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    demo = DemoProcess(run_dir, port)
    try:
        # Everything comes up from nothing: servers, table, admin, task, web, worker and beat.
        demo.wait_for(r"Data Rsync is running\.", timeout=600)
        output = demo.output
        assert f"Console    http://127.0.0.1:{port}/" in output
        password = demo.wait_for(r"Log in     user admin, password (\S+)", timeout=5).group(1)
        task_id = int(demo.wait_for(r"Task       http://127\.0\.0\.1:\d+/tasks/(\d+)/", timeout=5).group(1))
        assert "snapshot of every row first, then the change stream" in output
        assert f"loaded {ROWS:,} docstrings" in output
        assert (run_dir / "demo-admin-password").read_text().strip() == password

        # The task started through the worker syncs every row, as the console's API reports.
        url = f"http://127.0.0.1:{port}"
        api = api_session(url, password)
        deadline = time.monotonic() + 300
        run = latest_run(api, url, task_id)
        while not (run and run["rows_upserted"] >= ROWS):
            assert time.monotonic() < deadline, f"the demo task did not sync {ROWS} rows: {run}\n{demo.output}"
            assert run is None or run["status"] in ("queued", "running"), run
            time.sleep(1)
            run = latest_run(api, url, task_id)
        assert run["rows_upserted"] == ROWS and run["rows_failed"] == 0, run
        demo.wait_for(r"Following the change stream", timeout=60)

        # Ctrl-C stops every process and server it started.
        pids = recorded_pids(run_dir)
        assert set(pids) == {"mariadb", "redis", "milvus", "web", "worker", "beat"}, pids
        assert all(pid_alive(pid) for pid in pids.values()), pids
        assert demo.interrupt() == 0, demo.output
        assert "Stopped. `make demo` again picks up where this one left off." in demo.output
        assert not [name for name, pid in pids.items() if pid_alive(pid)], demo.output

        # A second demo reuses the table, the password and the checkpoint: no new snapshot.
        again = DemoProcess(run_dir, port)
        try:
            again.wait_for(r"Data Rsync is running\.", timeout=600)
            assert f"password {password}" in again.output
            assert f"Table demo.docs: reusing {ROWS:,} rows." in again.output
            assert "snapshot done earlier (checkpoint kept)" in again.output
            api = api_session(url, password)
            run = latest_run(api, url, task_id)
            assert run is not None and run["status"] in ("queued", "running"), run
            assert run["rows_upserted"] == 0, run  # nothing re-embedded or re-written
            pids = recorded_pids(run_dir)
            assert again.interrupt() == 0, again.output
            assert not [name for name, pid in pids.items() if pid_alive(pid)], again.output
        finally:
            again.kill()
    finally:
        demo.kill()
        kill_recorded(run_dir)
