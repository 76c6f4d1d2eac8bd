"""The verbs that change data sources, vector stores and vectorizers (embedding models)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from accounts.services import grant_creator
from audit import services as audit

from .connectors import source_connector, target_connector
from .connectors.base import CheckResult
from .models import DataSource, EmbeddingModel, VectorStore

SOURCE_FIELDS = ("kind", "host", "port", "database", "user")
STORE_FIELDS = ("kind", "uri")
EMBEDDING_MODEL_FIELDS = ("kind", "model_name", "base_url", "dimension", "columns", "dotted_path", "batch_size",
                          "max_concurrency", "timeout_seconds")
# Secrets are audited as "changed" only: the diff compares their envelopes, never shows them.
AUDITED_SOURCE_FIELDS = ("name", *SOURCE_FIELDS, "password")
AUDITED_STORE_FIELDS = ("name", *STORE_FIELDS, "token")
AUDITED_EMBEDDING_MODEL_FIELDS = ("name", *EMBEDDING_MODEL_FIELDS, "api_key")

logger = logging.getLogger(__name__)


class InUse(Exception):
    """The object is used by sync tasks; the message names them."""


@transaction.atomic
def save_source(*, name: str, password: str | None = None, **fields) -> DataSource:
    """Create or update a source by name; `password=None` keeps the stored one."""
    return _save_by_name(DataSource, name=name, fields=fields, allowed=SOURCE_FIELDS,
                         audited=AUDITED_SOURCE_FIELDS, secret_field="password", secret=password)


@transaction.atomic
def save_store(*, name: str, token: str | None = None, **fields) -> VectorStore:
    """Create or update a vector store by name; `token=None` keeps the stored one."""
    return _save_by_name(VectorStore, name=name, fields=fields, allowed=STORE_FIELDS,
                         audited=AUDITED_STORE_FIELDS, secret_field="token", secret=token)


@transaction.atomic
def save_embedding_model(*, name: str, api_key: str | None = None, **fields) -> EmbeddingModel:
    """Create or update a vectorizer by name; `api_key=None` keeps the stored key."""
    return _save_by_name(EmbeddingModel, name=name, fields=fields, allowed=EMBEDDING_MODEL_FIELDS,
                         audited=AUDITED_EMBEDDING_MODEL_FIELDS, secret_field="api_key", secret=api_key)


def _save_by_name(model, *, name: str, fields: dict, allowed, audited, secret_field: str, secret: str | None):
    """Sources, stores and vectorizers are saved the same way: found by name, their one secret
    replaced only when a new one is given, checked, and audited with the secret as "changed"."""
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {model._meta.verbose_name} fields: {', '.join(sorted(unknown))}")
    obj = model.objects.filter(name=name).first() or model(name=name)
    before = audit.snapshot(obj, audited) if obj.pk else None
    for key, value in fields.items():
        setattr(obj, key, value)
    if secret is not None:
        setattr(obj, secret_field, secret)
    obj.full_clean()
    obj.save()
    _record_save(obj, before, audit.snapshot(obj, audited), secret_field)
    return obj


def _record_save(obj, before: dict | None, after: dict, secret: str) -> None:
    diff = audit.model_diff(before, after, secret_fields=[secret])
    if before is None:
        audit.record(action="create", obj=obj, diff=diff)
        grant_creator(obj)
    elif diff:
        audit.record(action="update", obj=obj, diff=diff)



def _refuse_if_used(obj: DataSource | VectorStore | EmbeddingModel, what: str) -> None:
    names = sorted(obj.tasks.values_list("name", flat=True))
    if names:
        raise InUse(
            f"The {what} {obj.name!r} is used by task{'s' if len(names) > 1 else ''} {', '.join(names)}: "
            f"delete or move {'them' if len(names) > 1 else 'it'} first."
        )


@transaction.atomic
def delete_source(source: DataSource) -> None:
    """Delete a source no task uses (raises InUse otherwise)."""
    _refuse_if_used(source, "data source")
    audit.record(action="delete", obj=source, diff=audit.model_diff(
        audit.snapshot(source, AUDITED_SOURCE_FIELDS), None, secret_fields=["password"]))
    source.delete()


@transaction.atomic
def delete_store(store: VectorStore) -> None:
    """Delete a vector store no task uses (raises InUse otherwise); its collections stay on the server."""
    _refuse_if_used(store, "vector store")
    audit.record(action="delete", obj=store, diff=audit.model_diff(
        audit.snapshot(store, AUDITED_STORE_FIELDS), None, secret_fields=["token"]))
    store.delete()


@transaction.atomic
def delete_embedding_model(model: EmbeddingModel) -> None:
    """Delete a vectorizer no task uses (raises InUse otherwise)."""
    _refuse_if_used(model, "embedding model")
    audit.record(action="delete", obj=model, diff=audit.model_diff(
        audit.snapshot(model, AUDITED_EMBEDDING_MODEL_FIELDS), None, secret_fields=["api_key"]))
    model.delete()


def check_source(
    source: DataSource, *, table: str | None = None, required_columns: dict[str, list[str]] | None = None,
    task_id: int | None = None,
) -> list[CheckResult]:
    """Run every check against the live server and remember the outcome on the source.

    `task_id`: the task being checked, whose own server-side state (a PostgreSQL slot) counts
    as available."""
    results = source_connector(source).check(table=table, required_columns=required_columns, task_id=task_id)
    DataSource.objects.filter(pk=source.pk).update(
        last_check_ok=all(r.ok for r in results), last_check_at=timezone.now(),
        last_check_report=[r.as_dict() for r in results],
    )
    return results


def check_store(store: VectorStore) -> list[CheckResult]:
    """Test the store and remember the outcome on it, as `check_source` does for sources."""
    try:
        target = target_connector(store)
    except ValueError as exc:  # no connector for this kind of store
        results = [CheckResult("connect", False, str(exc))]
    else:
        try:
            results = target.check()
        finally:
            target.close()
    VectorStore.objects.filter(pk=store.pk).update(
        last_check_ok=all(r.ok for r in results), last_check_at=timezone.now(),
        last_check_report=[r.as_dict() for r in results],
    )
    return results


def encrypted_fields() -> list[tuple[type, str]]:
    """Every (model, field name) that holds a secret."""
    from django.apps import apps

    from .fields import EncryptedTextField

    return [
        (model, field.name)
        for model in apps.get_models()
        for field in model._meta.get_fields()
        if isinstance(field, EncryptedTextField)
    ]


def rotate_encryption_keys(*, progress=None) -> dict[str, int]:
    """Re-encrypt every secret under the primary (first) key; returns counts per model.

    All or nothing, in one transaction with its audit entry: a secret that does not decrypt (its
    key is not configured) stops the rotation with nothing changed, so no rotation is ever half
    done and the audit log never misses re-encrypted rows. The failed attempt is recorded too.
    Secrets are few (one per source, store and embedding model), so the transaction is short.
    """
    from . import crypto

    ring = crypto.keyring()
    label = f"primary key {ring.primary_id}"
    try:
        with transaction.atomic():
            counts = _re_encrypt(ring, progress)
            audit.record(action="rotate_keys", object_type="encryption", object_label=label,
                         diff={"re_encrypted": counts})
    except Exception as exc:
        _record_failed_rotation(label, exc)
        raise
    return counts


def _re_encrypt(ring, progress) -> dict[str, int]:
    targets = encrypted_fields()
    # Read first, then write: updating rows while a cursor walks the same table is unsafe on SQLite.
    rows = {(model, name): list(model.objects.exclude(**{name: ""}).values_list("pk", name)) for model, name in targets}
    total = sum(len(found) for found in rows.values())
    done, counts = 0, {}
    for (model, name), found in rows.items():
        label = f"{model._meta.label}.{name}"
        counts[label] = 0
        for pk, envelope in found:
            done += 1
            if ring.key_id_of(envelope) != ring.primary_id:
                # Conditional on the envelope read above: a secret changed meanwhile is left as saved.
                model.objects.filter(pk=pk, **{name: envelope}).update(**{name: ring.encrypt(ring.decrypt(envelope))})
                counts[label] += 1
            if progress:
                progress(done, total)
    return counts


def _record_failed_rotation(label: str, exc: Exception) -> None:
    """Record a rotation that stopped (and changed nothing), without hiding why it stopped."""
    try:
        with transaction.atomic():
            audit.record(action="rotate_keys_failed", object_type="encryption", object_label=label,
                         diff={"error": f"{type(exc).__name__}: {exc}"[:500]})
    except Exception:
        logger.exception("could not record the failed key rotation in the audit log")
