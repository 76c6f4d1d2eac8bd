"""Walk the audit chain; exit non-zero and name the first bad row when it was tampered with."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEvent
from audit.services import verify_chain
from tasks.progress import CommandProgress


class Command(BaseCommand):
    help = "Verify the audit log's hash chain."

    def handle(self, *args, **options):
        total = AuditEvent.objects.count()
        bar = CommandProgress(self.stdout, phase="verify")
        problems = verify_chain(progress=bar)
        bar.finish()
        if problems:
            for problem in problems:
                self.stderr.write(f"TAMPERED: {problem.reason}")
            raise CommandError(f"The audit chain is broken at event {problems[0].event_id}.")
        self.stdout.write(self.style.SUCCESS(f"The audit chain of {total} events is intact."))
