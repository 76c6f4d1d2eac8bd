"""Django admin for tasks, runs, checkpoints and dead letters.

Tasks are saved and deleted through `tasks.services` (primary key from the catalog, checkpoint,
audit entry, creator's grant; a running task is not deleted, a PostgreSQL task's slot is dropped).
Runs and dead letters are records: read-only, and seen only through a task the user may see.
"""

from __future__ import annotations

import redis
from django import forms
from django.contrib import admin, messages
from kombu.exceptions import OperationalError as BrokerError

from accounts.admin import NotFoundAdminMixin, ObjectPermissionAdminMixin, ServiceAdminMixin
from accounts.permissions import can
from datasources.connectors.base import ConnectorError
from datasources.selectors import sources_for, stores_for

from . import selectors, services
from .models import Checkpoint, DeadLetter, SyncRun, SyncTask
from .validation import validate_task


class CheckpointInline(admin.StackedInline):
    model = Checkpoint
    can_delete = False
    readonly_fields = ["snapshot_state", "snapshot_last_key", "snapshot_rows", "stream_position", "updated_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class SyncTaskAdminForm(forms.ModelForm):
    """Checks the task by the rules the console, the API and config files use (`validate_task`),
    so a bad task is a form error here too, never a failed save."""

    class Meta:
        model = SyncTask
        fields = ["name", "source", "store", *services.TASK_FIELDS]

    def _post_clean(self) -> None:
        super()._post_clean()  # puts the cleaned data on the instance
        if self.errors:
            return  # the fields' own errors first: the rules would only repeat them
        for name, errors in validate_task(self.instance).errors.items():
            for message in errors:
                self.add_error(name if name in self.fields else None, message)


@admin.register(SyncTask)
class SyncTaskAdmin(ServiceAdminMixin, ObjectPermissionAdminMixin, admin.ModelAdmin):
    form = SyncTaskAdminForm
    list_display = ["name", "source", "store", "table", "collection", "mode", "desired_state", "updated_at"]
    # Related-only: the filter lists the sources and stores of the tasks shown, not every one.
    list_filter = ["mode", "desired_state", ("source", admin.RelatedOnlyFieldListFilter),
                   ("store", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "table", "collection"]
    readonly_fields = ["primary_key", "desired_state", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "source", "store", "table", "primary_key", "text_template", "payload_columns",
                           "embedding_model", "vectorizer", "collection", "mode", "batch_size"]}),
        ("Capture and chunking", {"fields": ["capture", "updated_at_column", "soft_delete_column", "poll_interval",
                                             "overlap_seconds", "chunk_size", "chunk_overlap"]}),
        ("Vector index", {"fields": ["index_type", "metric", "hnsw_m", "hnsw_ef_construction", "ivf_nlist"]}),
        ("State", {"fields": ["desired_state", "created_at", "updated_at"]}),
    ]
    inlines = [CheckpointInline]
    actions = ["start", "stop", "resnapshot"]
    refusals = (services.TaskRunning, ConnectorError)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        return [*readonly, "name"] if obj is not None else readonly  # save_task finds tasks by name

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "source":
            kwargs["queryset"] = sources_for(request.user)
        elif db_field.name == "store":
            kwargs["queryset"] = stores_for(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_through_service(self, request, obj, form, change: bool) -> SyncTask:
        data = form.cleaned_data
        fields = {name: data[name] for name in services.TASK_FIELDS if name in data}
        return services.save_task(name=obj.name if change else data["name"], source=data["source"],
                                  store=data["store"], **fields)

    def delete_through_service(self, obj: SyncTask) -> None:
        services.delete_task(obj)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Runs, checkpoints and dead letters go with their task (delete_task): the right to delete
        # the task is enough, as on the task's page.
        owned = {str(model._meta.verbose_name) for model in (SyncRun, DeadLetter, Checkpoint)}
        return deleted, counts, {p for p in perms_needed if str(p) not in owned}, protected

    def _runnable(self, request, queryset):
        for task in queryset:
            if can(request.user, "run", task):
                yield task
            else:
                self.message_user(request, f"{task}: you may not start or stop this task.", messages.ERROR)

    @admin.action(description="Start the selected tasks")
    def start(self, request, queryset) -> None:
        for task in self._runnable(request, queryset):
            try:
                services.start_task(task)
            except services.TaskNotReady as exc:
                self.message_user(request, f"{task}: {exc}", messages.ERROR)
            except (BrokerError, redis.RedisError, OSError) as exc:
                self.message_user(request, f"{task}: marked running, but the worker queue cannot be reached "
                                           f"({exc}).", messages.WARNING)
            else:
                self.message_user(request, f"{task}: started.")

    @admin.action(description="Stop the selected tasks")
    def stop(self, request, queryset) -> None:
        for task in self._runnable(request, queryset):
            services.stop_task(task)
            self.message_user(request, f"{task}: asked to stop.")

    @admin.action(description="Re-snapshot the selected tasks on their next run")
    def resnapshot(self, request, queryset) -> None:
        for task in self._runnable(request, queryset):
            services.resnapshot_task(task)
            self.message_user(request, f"{task}: will take a new snapshot.")


class _SeenThroughTask(NotFoundAdminMixin, admin.ModelAdmin):
    """Records of a task (runs, dead letters): a user sees them exactly when they may see the task,
    and nobody changes them here."""

    list_filter = [("task", admin.RelatedOnlyFieldListFilter)]

    def visible(self, request):
        raise NotImplementedError

    def get_queryset(self, request):
        queryset = self.visible(request)
        ordering = self.get_ordering(request)
        return queryset.order_by(*ordering) if ordering else queryset

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return request.user.is_active and request.user.is_authenticated
        return can(request.user, "view", obj.task)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # they go with their task


@admin.register(SyncRun)
class SyncRunAdmin(_SeenThroughTask):
    list_display = ["id", "task", "status", "phase", "rows_read", "rows_upserted", "rows_deleted", "rows_failed",
                    "started_at", "finished_at"]
    list_filter = ["status", "phase", ("task", admin.RelatedOnlyFieldListFilter)]
    date_hierarchy = "created_at"

    def visible(self, request):
        return selectors.runs_for(request.user)


@admin.register(DeadLetter)
class DeadLetterAdmin(_SeenThroughTask):
    list_display = ["id", "task", "key", "error", "created_at"]
    search_fields = ["error"]

    def visible(self, request):
        return selectors.dead_letters_for(request.user)
