"""`make demo`: private servers, a table of real text, the console, a worker and beat until Ctrl-C."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks.demo import DemoError, run_demo, run_web_demo


class Command(BaseCommand):
    help = (
        "Start private MariaDB, Redis and Milvus Lite servers under RUN_DIR, load a table of Python "
        "docstrings, create an admin user and a sync task, and run the web console (daphne), a Celery "
        "worker and beat; the task starts on the worker and its progress shows in the console and here. "
        "Ctrl-C stops everything; a second run reuses what the first one made. With --no-web, the sync "
        "runs in this process and search results and the change stream are shown in the terminal."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=None,
                            help="load this many rows instead of every docstring (about 3,800; more repeat them)")
        parser.add_argument("--keep-servers", action="store_true",
                            help="leave the servers running on exit, for the next demo to reuse")
        parser.add_argument("--port", type=int, default=None,
                            help="port of the web console (default: 8000, or the next free one)")
        parser.add_argument("--no-web", action="store_true",
                            help="no console, worker or beat: run the sync here and search in the terminal")

    def handle(self, *args, **options) -> None:
        if options["rows"] is not None and options["rows"] < 1:
            raise CommandError("--rows must be at least 1.")
        if options["port"] is not None and not 0 < options["port"] < 65536:
            raise CommandError("--port must be between 1 and 65535.")
        try:
            # The raw stream: Django's wrapper would end every progress update with a newline.
            if options["no_web"]:
                run_demo(rows=options["rows"], keep_servers=options["keep_servers"], out=sys.stdout)
            else:
                run_web_demo(rows=options["rows"], keep_servers=options["keep_servers"], port=options["port"],
                             out=sys.stdout)
        except DemoError as exc:
            raise CommandError(str(exc)) from None
