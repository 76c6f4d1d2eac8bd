"""Re-encrypt every stored secret under the primary key (the first of RSYNC_ENCRYPTION_KEYS)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from datasources.crypto import SecretDecryptionError, keyring
from datasources.services import rotate_encryption_keys
from tasks.progress import TerminalPublisher


class Command(BaseCommand):
    help = "Re-encrypt all secrets under the primary encryption key, with progress."

    def handle(self, *args, **options):
        bar = TerminalPublisher(self.stdout, every=2.0)

        def progress(done: int, total: int) -> None:
            bar({"phase": "rotate", "status": "running", "done": done, "total": total, "rate": 0.0,
                 "eta": None, "lag": None, "counters": {}})

        try:
            counts = rotate_encryption_keys(progress=progress)
        except SecretDecryptionError as exc:
            raise CommandError(f"Rotation stopped: {exc}. Nothing was changed.") from None
        self.stdout.write("")
        for label, count in counts.items():
            self.stdout.write(f"{label}: {count} re-encrypted")
        self.stdout.write(self.style.SUCCESS(f"Every secret is now under key {keyring().primary_id!r}."))
