"""Serializers of sync tasks, runs, dead letters, previews and events.

A task's table, text template and payload columns are checked against the live catalog when the
source answers; each problem is reported on its own field. When the source is down the task is
saved anyway (start checks everything again).
"""

from __future__ import annotations

import re
import string
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from datasources.connectors import source_connector
from datasources.connectors.base import ConnectorError
from datasources.connectors.milvus import RESERVED_FIELDS
from datasources.models import DataSource, VectorStore
from datasources.selectors import sources_for, stores_for

from ..models import DeadLetter, SyncRun, SyncTask
from ..services import TASK_FIELDS, save_task

COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template_problem(template: str) -> str | None:
    """Why a text template cannot be rendered, or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"Not a valid template: {exc}. Put column names in braces, e.g. {{title}}; write {{{{ for a brace."
    if any(field_name == "" or (field_name or "").isdigit() for _, field_name, _, _ in parts):
        return "Name a column in every pair of braces, e.g. {title}; write {{ and }} for literal braces."
    if not any(field_name for _, field_name, _, _ in parts):
        return "The template names no column: put column names in braces, e.g. {title}\\n\\n{body}."
    return None


def catalog_problems(source: DataSource, table: str, template: str, payload: list[str]) -> dict[str, str]:
    """Per field, what the live catalog says is wrong; empty when all fits or the source is down."""
    try:
        info = source_connector(source).describe_table(table)
    except (ConnectorError, ValueError):
        return {}  # down, refusing, or no connector for its kind yet: saving works, start checks again
    if info is None:
        return {"table": f"Table {table!r} does not exist in database {source.database!r} (or the user cannot see it)."}
    names = {c.name for c in info.columns}
    have = f"(it has: {', '.join(sorted(names))})"
    problems = {}
    missing = [c for c in SyncTask(text_template=template).template_columns if c not in names]
    if missing:
        problems["text_template"] = (
            f"The text template names column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} that {table!r} does not have {have}."
        )
    missing = [c for c in payload if c not in names]
    if missing:
        problems["payload_columns"] = (
            f"Payload column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"{'do' if len(missing) > 1 else 'does'} not exist in {table!r} {have}."
        )
    return problems


@extend_schema_field(OpenApiTypes.INT)
class _VisibleSource(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[DataSource]:
        return sources_for(self.context["request"].user)


@extend_schema_field(OpenApiTypes.INT)
class _VisibleStore(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[VectorStore]:
        return stores_for(self.context["request"].user)


class _MappingFields(serializers.Serializer):
    """Validation shared by tasks and draft previews: template syntax, payload names, live catalog."""

    def validate_text_template(self, value: str) -> str:
        problem = template_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_payload_columns(self, value: list[str]) -> list[str]:
        reserved = sorted(set(value) & RESERVED_FIELDS)
        if reserved:
            raise serializers.ValidationError(
                f"{', '.join(repr(c) for c in reserved)} clash{'es' if len(reserved) == 1 else ''} with a "
                f"field the store keeps for itself ({', '.join(sorted(RESERVED_FIELDS))})."
            )
        if len(set(value)) != len(value):
            raise serializers.ValidationError("A payload column is listed twice.")
        return value

    def check_catalog(self, source: DataSource, table: str, template: str, payload: list[str]) -> None:
        problems = catalog_problems(source, table, template, payload)
        if problems:
            raise serializers.ValidationError({field: [message] for field, message in problems.items()})


class SyncTaskSerializer(_MappingFields, serializers.ModelSerializer):
    """A sync task: which table of which source, how its rows become text, and where the vectors go."""

    source = _VisibleSource(help_text="Id of the data source.")
    store = _VisibleStore(help_text="Id of the vector store.")
    payload_columns = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=200,
        help_text="Columns stored next to each vector (filterable, returned by search).",
    )
    collection = serializers.CharField(
        max_length=255, required=False, allow_blank=True,
        help_text="Milvus collection; defaults to the task name with '-' replaced by '_'.",
    )
    batch_size = serializers.IntegerField(min_value=1, max_value=100_000, required=False)

    class Meta:
        model = SyncTask
        # What save_task accepts is what the API accepts.
        fields = ["id", "name", "source", "store", *TASK_FIELDS, "primary_key", "desired_state", "created_at",
                  "updated_at"]
        read_only_fields = ["primary_key", "desired_state"]

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("The name cannot be changed (config files refer to tasks by name).")
        return value

    def validate_collection(self, value: str) -> str:
        if value and not COLLECTION_NAME.match(value):
            raise serializers.ValidationError(
                "Use letters, digits and underscores, starting with a letter or underscore."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        mapping = ("source", "table", "text_template", "payload_columns")
        if any(key in attrs for key in mapping):
            def value(key: str) -> Any:
                return attrs[key] if key in attrs else getattr(self.instance, key, None)

            self.check_catalog(value("source"), value("table"), value("text_template"),
                               list(value("payload_columns") or []))
        return attrs

    def create(self, validated_data: dict[str, Any]) -> SyncTask:
        return self._save(validated_data["name"], validated_data["source"], validated_data["store"], validated_data)

    def update(self, instance: SyncTask, validated_data: dict[str, Any]) -> SyncTask:
        return self._save(
            instance.name, validated_data.get("source", instance.source), validated_data.get("store", instance.store),
            validated_data,
        )

    @staticmethod
    def _save(name: str, source: DataSource, store: VectorStore, data: dict[str, Any]) -> SyncTask:
        fields = {key: data[key] for key in TASK_FIELDS if key in data}
        return save_task(name=name, source=source, store=store, **fields)


class TaskDraftSerializer(_MappingFields):
    """An unsaved task, to preview what its rows would become."""

    source = _VisibleSource(help_text="Id of the data source.")
    table = serializers.CharField(max_length=64)
    text_template = serializers.CharField()
    payload_columns = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self.check_catalog(attrs["source"], attrs["table"], attrs["text_template"], attrs["payload_columns"])
        return attrs


class SyncRunSerializer(serializers.ModelSerializer):
    """One doing of a task: its status, phase, counters and error."""

    task_name = serializers.CharField(source="task.name", read_only=True)

    class Meta:
        model = SyncRun
        fields = [
            "id", "task", "task_name", "status", "phase", *SyncRun.COUNTERS, "rows_total", "lag_seconds",
            "worker", "created_at", "started_at", "finished_at", "error", "notices",
        ]
        read_only_fields = fields


class DeadLetterSerializer(serializers.ModelSerializer):
    """A row the task could not write, with why."""

    class Meta:
        model = DeadLetter
        fields = ["id", "task", "run", "key", "row", "error", "created_at", "replay_requested_at"]
        read_only_fields = fields


class DeadLetterSelectionSerializer(serializers.Serializer):
    """Which dead letters an action applies to; without `ids`, all of the task's."""

    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_empty=False,
        help_text="Dead letter ids of this task; leave out for all of them.",
    )


class DeadLetterActionSerializer(serializers.Serializer):
    detail = serializers.CharField()
    count = serializers.IntegerField(help_text="How many dead letters the action applied to.")


class PreviewRowSerializer(serializers.Serializer):
    """What one row of the table would be stored as."""

    key = serializers.ListField(child=serializers.JSONField(), help_text="Primary key values of the row.")
    text = serializers.CharField(help_text="The text that would be embedded.")
    payload = serializers.DictField(help_text="The payload that would be stored.")
    error = serializers.CharField(help_text="Why this row could not be rendered (empty when it could).")
    notice = serializers.CharField(
        help_text="How the model takes the text: cut when it is longer than the model takes, or in how many "
                  "chunks (empty when it takes it whole)."
    )


class SearchHitSerializer(serializers.Serializer):
    """One hit of a search, best first."""

    key = serializers.JSONField()
    score = serializers.FloatField()
    text = serializers.CharField()
    payload = serializers.DictField()


class TaskEventSerializer(serializers.Serializer):
    """A task event; `progress` events also carry status, phase, counters, done, total, rate, eta, lag, message."""

    seq = serializers.IntegerField(help_text="Grows per task across runs; ask for events after the last one seen.")
    type = serializers.CharField()


class EventsQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, required=False, default=0,
                                     help_text="Return events with a larger seq.")


class SearchQuerySerializer(serializers.Serializer):
    q = serializers.CharField(help_text="What to search for.")
    limit = serializers.IntegerField(min_value=1, max_value=100, required=False, default=10)
