"""Check a data source (and optionally a task's table and columns) and say what is wrong."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from datasources.models import DataSource
from datasources.services import check_source
from tasks.models import SyncTask
from tasks.services import required_columns


class Command(BaseCommand):
    help = "Check that a data source is reachable and configured for change capture."

    def add_arguments(self, parser):
        parser.add_argument("source", nargs="?", help="data source name")
        parser.add_argument("--table", help="also check this table")
        parser.add_argument("--task", help="check the source, table and columns of this task")

    def handle(self, *args, **options):
        table, columns = options["table"], None
        if options["task"]:
            task = SyncTask.objects.select_related("source").filter(name=options["task"]).first()
            if task is None:
                raise CommandError(f"No sync task {options['task']!r}.")
            source, table, columns = task.source, task.table, required_columns(task)
        else:
            source = DataSource.objects.filter(name=options["source"]).first()
            if source is None:
                raise CommandError(f"No data source {options['source']!r}.")
        results = check_source(source, table=table, required_columns=columns)
        for result in results:
            mark = "ok  " if result.ok else "FAIL"
            self.stdout.write(f"{mark} {result.name:20} {result.message}")
        failed = [r for r in results if not r.ok]
        if failed:
            raise CommandError(f"{len(failed)} check(s) failed.")
