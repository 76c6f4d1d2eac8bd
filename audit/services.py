"""Writing and verifying the audit log."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from . import context as audit_context
from .models import GENESIS_HASH, AuditChainHead, AuditEvent

SECRET_CHANGED = "changed"


def model_diff(before: dict | None, after: dict | None, *, secret_fields: Iterable[str] = ()) -> dict:
    """`{field: [old, new]}` for fields that differ; secrets appear only as "changed"."""
    before, after = before or {}, after or {}
    secrets = set(secret_fields)
    diff = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in secrets:
            diff[name] = SECRET_CHANGED
        else:
            diff[name] = [old, new]
    return diff


def snapshot(instance, fields: Iterable[str]) -> dict:
    """The audited fields of a model instance, JSON-friendly."""
    out = {}
    for name in fields:
        value = getattr(instance, name)
        if hasattr(value, "pk"):
            value = str(value)
        out[name] = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)
    return out


def record(
    *, action: str, obj=None, object_type: str = "", object_id: str = "", object_label: str = "",
    diff: dict | None = None, actor=None, context: audit_context.AuditContext | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction."""
    ctx = context or audit_context.current()
    actor = actor if actor is not None else ctx.actor
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_label = object_label or str(obj)
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        event = AuditEvent(
            created_at=timezone.now(), actor=actor if getattr(actor, "pk", None) else None,
            actor_name=getattr(actor, "get_username", lambda: "")() if actor is not None else "system",
            action=action, object_type=object_type, object_id=object_id, object_label=object_label[:255],
            diff=diff or {}, user_agent=ctx.user_agent, request_id=ctx.request_id, prev_hash=head.last_hash,
            # Normalised as the column stores it, so the hash matches what is read back.
            ip_address=audit_context.normalise_ip(ctx.ip_address),
        )
        event.hash = event.compute_hash()
        event.save()
        head.last_hash, head.last_event_id = event.hash, event.pk
        head.save(update_fields=["last_hash", "last_event_id"])
    return event


@dataclass
class ChainProblem:
    event_id: int | None
    reason: str


def verify_chain(*, progress=None) -> list[ChainProblem]:
    """Walk the chain oldest first; the first problem names the row that was altered, deleted or
    inserted out of order. Empty list: the chain is intact."""
    expected_prev = GENESIS_HASH
    count = AuditEvent.objects.count()
    for n, event in enumerate(AuditEvent.objects.order_by("id").iterator(chunk_size=2000), start=1):
        if event.prev_hash != expected_prev:
            return [ChainProblem(event.pk, f"event {event.pk} does not follow the previous event: an event before "
                                           "it was deleted or it was inserted out of order")]
        if event.compute_hash() != event.hash:
            return [ChainProblem(event.pk, f"event {event.pk} was altered after it was written")]
        expected_prev = event.hash
        if progress:
            progress(n, count)
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and head.last_hash != expected_prev:
        return [ChainProblem(head.last_event_id, f"the newest events (after the one with hash {expected_prev[:12]}) "
                                                 "were deleted")]
    return []
