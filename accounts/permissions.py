"""The one permission path: model-wide rights from roles, object rights from grants (guardian).

Pages, the API, Django admin and the websocket all filter and check through these functions, so
a user sees the same objects everywhere: without view right an object does not exist for them
(404); with view but not the right to act, acting is forbidden (403).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404
from guardian.shortcuts import get_objects_for_user


def perm_name(model: type[Model] | Model, action: str) -> str:
    meta = model._meta
    return f"{meta.app_label}.{action}_{meta.model_name}"


def restrict(queryset: QuerySet, user, action: str = "view") -> QuerySet:
    """The objects of `queryset` that `user` may `action` (view, change, delete, run)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return queryset.none()
    return get_objects_for_user(
        user, perm_name(queryset.model, action), klass=queryset, accept_global_perms=True, with_superuser=True,
    )


def can(user, action: str, obj: Model) -> bool:
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    perm = perm_name(obj, action)
    # ModelBackend ignores model-wide rights when asked about an object; ask both ways.
    return user.has_perm(perm) or user.has_perm(perm, obj)


def get_or_deny(queryset: QuerySet, user, pk, action: str = "view"):
    """The object, 404 when the user may not see it, 403 when they may see but not `action` it."""
    obj = restrict(queryset, user, "view").filter(pk=pk).first()
    if obj is None:
        raise Http404(f"No {queryset.model._meta.verbose_name} with id {pk}.")
    if action != "view" and not can(user, action, obj):
        raise PermissionDenied(f"You may view this {queryset.model._meta.verbose_name} but not {action} it.")
    return obj
