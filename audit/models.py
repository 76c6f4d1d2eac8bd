"""The audit log: append-only, hash-chained.

Each event's hash is SHA-256 over its canonical form and the previous event's hash, so altering,
deleting or inserting a row out of order breaks the chain at that row (`manage.py verify_audit`).
The ORM refuses updates and deletes; database triggers (see the migrations) refuse them too.
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import models

GENESIS_HASH = "0" * 64


class AppendOnlyError(Exception):
    """Audit events are never changed or deleted."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("audit events are append-only")

    def delete(self):
        raise AppendOnlyError("audit events are append-only")


class AuditEvent(models.Model):
    created_at = models.DateTimeField(db_index=True)
    # No database-level foreign key: deleting a user must not touch (update) audit rows.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True, default="", db_index=True)
    object_id = models.CharField(max_length=64, blank=True, default="")
    object_label = models.CharField(max_length=255, blank=True, default="")
    diff = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        permissions = [("export_auditevent", "Can export the audit log")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name or '-'} {self.action} {self.object_label}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit events are append-only")

    def canonical(self) -> str:
        """The hashed form: every recorded field, sorted keys, no whitespace."""
        return json.dumps(
            {
                "created_at": self.created_at.isoformat(), "actor_id": self.actor_id,
                "actor_name": self.actor_name, "action": self.action, "object_type": self.object_type,
                "object_id": self.object_id, "object_label": self.object_label, "diff": self.diff,
                "ip_address": self.ip_address, "user_agent": self.user_agent, "request_id": self.request_id,
            },
            sort_keys=True, separators=(",", ":"), default=str,
        )

    def compute_hash(self) -> str:
        return hashlib.sha256((self.prev_hash + self.canonical()).encode("utf-8")).hexdigest()


class AuditChainHead(models.Model):
    """One row: the last hash. Locking it serialises appends so the chain never forks."""

    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    last_event_id = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit chain head at event {self.last_event_id}"
