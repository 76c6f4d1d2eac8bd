"""Re-encrypt every stored secret under the primary key (the first of RSYNC_ENCRYPTION_KEYS)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from datasources.crypto import SecretDecryptionError, keyring
from datasources.services import rotate_encryption_keys
from tasks.progress import CommandProgress


class Command(BaseCommand):
    help = "Re-encrypt all secrets under the primary encryption key, with progress."

    def handle(self, *args, **options):
        bar = CommandProgress(self.stdout, phase="rotate")
        try:
            counts = rotate_encryption_keys(progress=bar)
        except SecretDecryptionError as exc:
            raise CommandError(f"Rotation stopped: {exc}. Nothing was changed.") from None
        finally:
            bar.finish()
        for label, count in counts.items():
            self.stdout.write(f"{label}: {count} re-encrypted")
        self.stdout.write(self.style.SUCCESS(f"Every secret is now under key {keyring().primary_id!r}."))
