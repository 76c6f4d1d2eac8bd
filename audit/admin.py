"""The audit log in Django admin: read-only, for those with the right to view it (Super admins, and
users given Auditor rights). Rows are never changed or deleted, here or anywhere."""

from __future__ import annotations

from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_name", "action", "object_type", "object_label", "ip_address"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor_name", "object_label", "object_id", "ip_address", "request_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
    actions = None  # no "delete selected"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
