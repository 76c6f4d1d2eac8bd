"""Run a sync task in the foreground with a live progress line; Ctrl-C stops it cleanly."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from tasks.models import SyncTask
from tasks.progress import TerminalPublisher
from tasks.runner import TaskRunner
from tasks.services import mark_running, stop_task


class Command(BaseCommand):
    help = "Run a sync task in the foreground (snapshot and/or change stream) with progress."

    def add_arguments(self, parser):
        parser.add_argument("task", help="task id or name")
        parser.add_argument("--wait-lock", type=float, default=60.0,
                            help="seconds to wait for another runner of this task to let go")

    def handle(self, *args, **options):
        ref = options["task"]
        task = SyncTask.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
        task = task or SyncTask.objects.filter(name=ref).first()
        if task is None:
            raise CommandError(f"No sync task {ref!r}.")
        stop = threading.Event()
        interrupted = []

        def on_signal(signum, frame):
            interrupted.append(signum)
            stop.set()
            self.stderr.write("\nStopping after the current batch...")

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        mark_running(task)
        runner = TaskRunner(
            # The raw stream: Django's wrapper would end every redraw of the line with a newline.
            task.pk, publishers=[TerminalPublisher(self.stdout._out)], lock_wait=options["wait_lock"], stop_event=stop,
        )
        run = runner.run()
        if interrupted:
            stop_task(task)
        self.stdout.write("")
        if run is None:
            raise CommandError("Another runner holds this task; try again when it has stopped.")
        c = run
        self.stdout.write(
            f"Run {run.pk} {run.status}: read {c.rows_read}, embedded {c.rows_embedded}, "
            f"upserted {c.rows_upserted}, deleted {c.rows_deleted}, unchanged {c.rows_unchanged}, "
            f"filtered out {c.rows_filtered}, failed {c.rows_failed}."
        )
        for notice in run.notices:
            self.stdout.write(f"Notice: {notice}")
        if run.status == run.Status.FAILED:
            raise CommandError(run.error)
