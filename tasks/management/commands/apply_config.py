"""Create or update the sources, stores and tasks a YAML file declares (see docs/config.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from tasks.configfile import ConfigError, apply_config


class Command(BaseCommand):
    help = "Apply a config file: create or update sources, stores and tasks, all or nothing."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the YAML file, or - for standard input")
        parser.add_argument("--dry-run", action="store_true",
                            help="check everything and show what would change, then change nothing")

    def handle(self, *args, **options):
        path, dry_run = options["file"], options["dry_run"]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
        except UnicodeDecodeError:
            raise CommandError(f"Cannot read {path}: it is not UTF-8 text.") from None
        try:
            changes = apply_config(text, dry_run=dry_run)
        except ConfigError as exc:
            count = f"{len(exc.errors)} problem{'s' if len(exc.errors) != 1 else ''}"
            lines = "\n".join(f"  {error}" for error in exc.errors)
            raise CommandError(f"{path}: {count}, nothing was changed:\n{lines}") from None
        for change in changes:
            self.stdout.write(f"[dry run] {change}" if dry_run else str(change))
        counts = {action: sum(c.action == action for c in changes) for action in ("created", "updated", "unchanged")}
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        if dry_run:
            self.stdout.write(f"Dry run: {summary}; nothing was changed.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Applied: {summary}."))
