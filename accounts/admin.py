"""Django admin through the same permission path as pages and the API."""

from __future__ import annotations

from .permissions import can, restrict


class ObjectPermissionAdminMixin:
    """Lists show only objects the user may view; each object's rights come from `can()`."""

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return super().has_view_permission(request) or request.user.is_authenticated
        return can(request.user, "view", obj)

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is None:
            return super().has_change_permission(request)
        return can(request.user, "change", obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is None:
            return super().has_delete_permission(request)
        return can(request.user, "delete", obj)

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_staff
