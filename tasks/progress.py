"""One progress helper for every runner: counters, rate, ETA and lag, sent at most twice a second.

Payloads are typed dicts `{type, task, run, status, phase, counters, rate, eta, lag, done, total}`.
Subscribers receive the same payload: the terminal line of `run_task`, and `events.EventPublisher`,
which numbers it (`seq`) and pushes it to the websocket group `task-<id>`.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Callable

Publisher = Callable[[dict], None]
logger = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
_UNSET = object()  # "not given", as opposed to None ("no total": the change stream has none)
RATE_WINDOW = 15.0


class ProgressTracker:
    def __init__(self, *, task_id: int, run_id: int, publishers: list[Publisher] | None = None) -> None:
        self.task_id, self.run_id = task_id, run_id
        self.publishers = list(publishers or [])
        self.status = "running"
        self.phase = ""
        self.counters: dict[str, int] = {}
        self.done = 0
        self.total: int | None = None
        self.lag: float | None = None
        self.message = ""
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last_sent = 0.0

    def update(
        self, *, counters: dict[str, int] | None = None, done: int | None = None, total=_UNSET,
        lag: float | None = None, phase: str | None = None, status: str | None = None,
        message: str | None = None, force: bool = False,
    ) -> None:
        now = time.monotonic()
        if counters is not None:
            self.counters = dict(counters)
        if done is not None:
            self.done = done
            self._samples.append((now, done))
            # Keep one sample older than the window, so a batch slower than the window still has a rate.
            while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
                self._samples.popleft()
        if total is not _UNSET:
            self.total = total
        if lag is not None:
            self.lag = lag
        if phase is not None and phase != self.phase:
            self.phase, self._samples = phase, collections.deque([(now, self.done)])
            force = True
        if status is not None and status != self.status:
            self.status, force = status, True
        if message is not None:
            self.message = message
        if force or now - self._last_sent >= MIN_INTERVAL:
            self._last_sent = now
            self.publish()

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.total is None:  # the change stream has no end to count down to
            return None
        rate = self.rate
        return max(self.total - self.done, 0) / rate if rate > 0 else None

    def payload(self) -> dict:
        return {
            "type": "progress", "task": self.task_id, "run": self.run_id,
            "status": self.status, "phase": self.phase, "counters": self.counters,
            "done": self.done, "total": self.total, "rate": round(self.rate, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "lag": None if self.lag is None else round(self.lag, 3), "message": self.message,
        }

    def notice(self, text: str, *, level: str = "notice") -> None:
        """Push a message for the page's "recent errors and notices" at once (not rate-limited:
        notices are rare and each one matters), to the publishers that take notices."""
        payload = {"type": "notice", "task": self.task_id, "run": self.run_id, "level": level, "message": text}
        self._send([p for p in self.publishers if getattr(p, "takes_notices", False)], payload)

    def publish(self) -> None:
        self._send(self.publishers, self.payload())

    @staticmethod
    def _send(publishers: list[Publisher], payload: dict) -> None:
        for publish in publishers:
            try:
                publish(payload)
            except Exception:  # showing progress must never stop a sync
                logger.warning("a progress publisher failed", exc_info=True)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def progress_line(p: dict) -> str:
    """One terminal line: phase, a bar when the total is known, rows, rate, ETA, lag."""
    done, total = p["done"], p["total"]
    parts = [f"[{p['phase'] or p['status']}]"]
    if total:
        fraction = min(done / total, 1.0)
        filled = int(fraction * 24)
        parts.append(f"|{'#' * filled}{'.' * (24 - filled)}| {fraction:6.1%} {done}/{total} rows")
    else:
        parts.append(f"{done} rows")
    parts.append(f"{p['rate']:.0f} rows/s")
    if p["eta"] is not None:
        parts.append(f"ETA {format_duration(p['eta'])}")
    if p["lag"] is not None:
        parts.append(f"lag {p['lag']:.2f}s")
    c = p["counters"]
    if c:
        filtered = f"filt {c['rows_filtered']} " if c.get("rows_filtered") else ""  # only for tasks with a filter
        parts.append(
            f"emb {c.get('rows_embedded', 0)} ups {c.get('rows_upserted', 0)} "
            f"del {c.get('rows_deleted', 0)} same {c.get('rows_unchanged', 0)} {filtered}fail {c.get('rows_failed', 0)}"
        )
    if p.get("message"):
        parts.append(p["message"])
    return "  ".join(parts)


class TerminalPublisher:
    """Rewrites one line on a terminal; prints a line every few seconds when piped to a file.
    Notices get a line of their own."""

    takes_notices = True

    def __init__(self, stream=None, every: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every, self._last = every, 0.0

    def __call__(self, payload: dict) -> None:
        if payload.get("type") == "notice":
            clear = "\r\033[K" if self.tty else ""  # the progress line is redrawn by the next update
            self.stream.write(f"{clear}{payload['level'].capitalize()}: {payload['message']}\n")
            self.stream.flush()
            return
        line = progress_line(payload)
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            now = time.monotonic()
            if now - self._last < self.every and payload["status"] == "running":
                return
            self._last = now
            self.stream.write(line + "\n")
        self.stream.flush()


class CommandProgress:
    """The progress bar of a long management command: done/total, rate and ETA on one line.

    Call it with `(done, total)` as often as you like (it redraws at most twice a second), then
    `finish()`. Give it the command's `self.stdout`: the bar writes to the raw stream underneath,
    because Django's wrapper ends every write, and so every redraw, with a newline.
    """

    def __init__(self, stdout, *, phase: str) -> None:
        self.stream = getattr(stdout, "_out", stdout)
        self.terminal = TerminalPublisher(self.stream, every=2.0)
        self.tracker = ProgressTracker(task_id=0, run_id=0, publishers=[self.terminal])
        self.tracker.update(phase=phase)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.tracker.update(done=done, total=total)

    def finish(self) -> None:
        self.tracker.update(status="done", force=True)
        if self.terminal.tty:
            self.stream.write("\n")
            self.stream.flush()
