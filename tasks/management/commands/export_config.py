"""Print every source, store and task as a config file for apply_config (secrets as ${ENV_VAR})."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from tasks.configfile import export_config


class Command(BaseCommand):
    help = "Print the sources, stores and tasks as YAML; secrets only as ${ENV_VAR} references."

    def handle(self, *args, **options):
        self.stdout.write(export_config(), ending="")
