"""Serializers of sync tasks, runs, dead letters, previews and events.

A task is checked by `tasks.validation` (through `save_task`), as everywhere else it is saved:
each problem is a 400 on its own field. When the source cannot be reached the task is saved anyway
and `warnings` says what was not checked; start checks everything again.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from datasources.models import DataSource, VectorStore
from datasources.selectors import sources_for, stores_for

from ..models import DeadLetter, SyncRun, SyncTask
from ..services import TASK_FIELDS, save_task
from ..validation import TaskInvalid, validate_task

# The fields a preview of an unsaved task needs.
DRAFT_FIELDS = ("source", "table", "text_template", "payload_columns", "row_filter")


def api_errors(exc: TaskInvalid) -> serializers.ValidationError:
    """A 400 with the service's messages on the API's field names."""
    return serializers.ValidationError({
        (api_settings.NON_FIELD_ERRORS_KEY if name == NON_FIELD_ERRORS else name): messages
        for name, messages in exc.message_dict.items()
    })


@extend_schema_field(OpenApiTypes.INT)
class _VisibleSource(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[DataSource]:
        return sources_for(self.context["request"].user)


@extend_schema_field(OpenApiTypes.INT)
class _VisibleStore(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[VectorStore]:
        return stores_for(self.context["request"].user)


class SyncTaskSerializer(serializers.ModelSerializer):
    """A sync task: which table of which source, how its rows become text, and where the vectors go."""

    source = _VisibleSource(help_text="Id of the data source.")
    store = _VisibleStore(help_text="Id of the vector store.")
    payload_columns = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=200,
        help_text="Columns stored next to each vector (filterable, returned by search).",
    )
    collection = serializers.CharField(
        max_length=255, required=False, allow_blank=True,
        help_text="The store's collection; defaults to the task name with '-' replaced by '_'.",
    )
    warnings = serializers.SerializerMethodField(
        help_text="What saving could not check (e.g. the source was down) or will stop a start; "
                  "only in the answer to a create or update.",
    )

    class Meta:
        model = SyncTask
        # What save_task accepts is what the API accepts.
        fields = ["id", "name", "source", "store", *TASK_FIELDS, "primary_key", "desired_state", "created_at",
                  "updated_at", "warnings"]
        read_only_fields = ["primary_key", "desired_state"]

    def get_warnings(self, task: SyncTask) -> list[str]:
        return list(getattr(task, "save_warnings", []))

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("The name cannot be changed (config files refer to tasks by name).")
        return value

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
        try:
            return save_task(name=name, source=source, store=store, **fields)
        except TaskInvalid as exc:
            raise api_errors(exc) from None


class TaskDraftSerializer(serializers.Serializer):
    """An unsaved task, to preview what its rows would become."""

    source = _VisibleSource(help_text="Id of the data source.")
    table = serializers.CharField(max_length=64)
    text_template = serializers.CharField()
    payload_columns = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list)
    row_filter = serializers.JSONField(required=False, default=list,
                                       help_text="Conditions rows must meet, as for a task; rows left out are marked.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The same rules as a saved task, on the fields a preview has (no store yet).
        check = validate_task(SyncTask(collection="preview", **attrs))
        errors = {name: messages for name, messages in check.errors.items() if name in DRAFT_FIELDS}
        if errors:
            raise serializers.ValidationError(errors)
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
