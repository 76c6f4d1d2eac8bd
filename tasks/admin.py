"""Django admin for tasks, runs, checkpoints and dead letters."""

from __future__ import annotations

from django.contrib import admin, messages

from accounts.admin import ObjectPermissionAdminMixin
from accounts.permissions import can

from . import services
from .models import Checkpoint, DeadLetter, SyncRun, SyncTask


class CheckpointInline(admin.StackedInline):
    model = Checkpoint
    can_delete = False
    readonly_fields = ["snapshot_state", "snapshot_last_key", "snapshot_rows", "stream_position", "updated_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SyncTask)
class SyncTaskAdmin(ObjectPermissionAdminMixin, admin.ModelAdmin):
    list_display = ["name", "source", "store", "table", "collection", "mode", "desired_state", "updated_at"]
    list_filter = ["mode", "desired_state", "source", "store"]
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


@admin.register(SyncRun)
class SyncRunAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "status", "phase", "rows_read", "rows_upserted", "rows_deleted", "rows_failed",
                    "started_at", "finished_at"]
    list_filter = ["status", "phase", "task"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # runs are records of what happened


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "key", "error", "created_at"]
    list_filter = ["task"]
    search_fields = ["error"]

    def has_add_permission(self, request) -> bool:
        return False
