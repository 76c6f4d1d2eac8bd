"""The one progress helper: rate-limited payloads with rate and ETA, the terminal bar of long
management commands, and the kept events that let a task page draw its chart after a reload."""

from __future__ import annotations

import json
import os
import re
import select
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tasks import events
from tasks.progress import CommandProgress, ProgressTracker


def test_tracker_sends_at_most_twice_a_second_but_never_drops_a_status_change():
    sent: list[dict] = []
    tracker = ProgressTracker(task_id=1, run_id=7, publishers=[sent.append])
    tracker.update(phase="snapshot", total=1000, done=0)
    for done in range(1, 201):
        tracker.update(done=done)
    assert len(sent) == 1, "200 updates within a few milliseconds are one message"
    tracker.update(status="stopped")
    assert sent[-1]["status"] == "stopped" and sent[-1]["done"] == 200
    time.sleep(0.6)
    tracker.update(done=400)
    assert sent[-1]["done"] == 400 and sent[-1]["rate"] > 0
    assert sent[-1]["eta"] == pytest.approx((1000 - 400) / sent[-1]["rate"], rel=0.05)


def test_command_progress_redraws_one_line_on_a_terminal_with_rate_and_eta():
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        bar = CommandProgress(terminal, phase="rotate")
        bar(0, 300)
        time.sleep(0.6)
        bar(100, 300)
        time.sleep(0.6)
        bar(200, 300)
        bar(300, 300)
        bar.finish()
        terminal.flush()
        output = b""
        while select.select([leader], [], [], 0.5)[0]:  # all of it: one read may return only part
            output += os.read(leader, 65536)
    os.close(leader)
    output = output.decode()
    redraws = output.split("\r\x1b[K")
    assert len(redraws) >= 3, output
    # Every redraw replaces the line: no newline until the bar is finished.
    assert "\n" not in output.rstrip("\r\n"), repr(output)
    middle = next(r for r in redraws if "100/300" in r)
    assert re.search(r"\d+ rows/s", middle) and "ETA 00:0" in middle, middle
    assert "300/300" in redraws[-1] and "100.0%" in redraws[-1]


@pytest.mark.django_db
def test_verify_audit_prints_its_progress_and_result(capsys):
    from audit.services import record

    for n in range(5):
        record(action="test", diff={"n": n})
    call_command("verify_audit")
    out = capsys.readouterr().out
    assert "5/5 rows" in out and "The audit chain of 5 events is intact." in out


@pytest.mark.django_db(transaction=True)
def test_a_reloaded_task_page_draws_the_last_minutes_from_kept_events(make_task, client):
    task = make_task(0)
    for rate in (10.0, 20.0, 30.0):
        events.publish(task.pk, {"type": "progress", "status": "running", "rate": rate, "lag": 0.5, "done": 1})
    events.publish(task.pk, {"type": "notice", "level": "error", "message": "Row [7] went to the dead letters"})
    latest = events.latest_event(task.pk)
    assert latest["type"] == "notice" and abs(latest["at"] - time.time()) < 5

    admin = get_user_model().objects.create_superuser("root", password="root-pw-1234")
    client.force_login(admin)
    page = client.get(f"/tasks/{task.pk}/").content.decode()
    initial = json.loads(re.search(r'<script id="live-initial" type="application/json">(.*?)</script>', page,
                                   re.S).group(1))
    assert [point["rate"] for point in initial["history"]] == [10.0, 20.0, 30.0]
    assert initial["seq"] == latest["seq"] and abs(initial["server_time"] - time.time()) < 5


def test_notices_reach_the_terminal_on_their_own_line_and_a_failing_publisher_stops_nothing():
    import io

    from tasks.progress import TerminalPublisher

    out = io.StringIO()
    progress_only: list[dict] = []

    def broken(payload: dict) -> None:
        raise RuntimeError("the screen went away")

    tracker = ProgressTracker(task_id=1, run_id=2, publishers=[broken, TerminalPublisher(out), progress_only.append])
    tracker.update(phase="snapshot", total=10, done=5, force=True)
    tracker.notice("Row [7] went to the dead letters: bad value", level="error")
    tracker.update(status="succeeded", done=10)
    lines = out.getvalue().splitlines()
    assert "Error: Row [7] went to the dead letters: bad value" in lines
    assert lines[-1].startswith("[snapshot]") and "10/10 rows" in lines[-1]
    # A publisher that did not ask for notices (a progress bar) only ever sees progress payloads.
    assert progress_only and all(p["type"] == "progress" for p in progress_only)
