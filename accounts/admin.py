"""Django admin through the same permission path and the same services as pages and the API.

- Objects a user may not view do not exist for them: 404, as on pages and in the API (Django
  admin's own answer is a redirect to the index with "doesn't exist"); viewing without the right to
  change is a read-only page and a POST is 403.
- Saving and deleting go through the apps' services, so an admin change is audited, grants its
  creator rights and meets the same guards (a running task, a PostgreSQL slot) as one made in the
  console. A service's refusal is an error message, never a 500; "delete selected" deletes each
  object on its own, so one refusal does not undo the others.
- Users and roles (groups) are changed through `accounts.services`; nobody raises a user (or a
  role) above their own rights. DRF's token admin, which shows every token in clear, is removed:
  tokens are issued and revoked from the console, shown once.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.admin.utils import model_ngettext
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from guardian.conf import settings as guardian_settings
from rest_framework.authtoken.models import TokenProxy

from . import selectors, services
from .permissions import can, restrict
from .roles import ROLE_NAMES

User = get_user_model()


class NotFoundAdminMixin:
    """An object the user may not see (or that does not exist) is a 404, not a redirect."""

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with id {object_id}.")
        return obj

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with id {object_id}.")


class ObjectPermissionAdminMixin(NotFoundAdminMixin):
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


class ServiceAdminMixin:
    """Saves and deletes through a service instead of the ORM.

    Subclasses implement `save_through_service(request, obj, form, change)`, returning the saved
    object, and `delete_through_service(obj)`; `refusals` are the exceptions with which their
    services refuse (shown as an error message, the change rolled back)."""

    refusals: tuple[type[Exception], ...] = ()

    def save_through_service(self, request, obj, form, change: bool):
        raise NotImplementedError

    def delete_through_service(self, obj) -> None:
        raise NotImplementedError

    def save_model(self, request, obj, form, change) -> None:
        saved = self.save_through_service(request, obj, form, change)
        # Django admin goes on with `obj` (its history entry, the redirect): make it the saved row.
        vars(obj).update(vars(saved))

    def save_related(self, request, form, formsets, change) -> None:
        # Many-to-many fields went through the service with the rest of the form; no save_m2m().
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request, obj) -> None:
        self.delete_through_service(obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except self.refusals as exc:  # raised inside the view's transaction: nothing was deleted
            self.message_user(request, str(exc), messages.ERROR)
            opts = self.opts
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change",
                                                args=[object_id], current_app=self.admin_site.name))

    def delete_queryset(self, request, queryset) -> None:
        self.delete_each(request, queryset, log=False)

    def delete_each(self, request, objects, *, log: bool) -> int:
        """Delete each object through the service in its own savepoint; refusals become messages.
        Returns how many were deleted."""
        deleted = 0
        for obj in objects:
            if not self.has_delete_permission(request, obj):
                self.message_user(request, f"{obj}: you may not delete it.", messages.ERROR)
                continue
            try:
                with transaction.atomic():
                    if log:
                        self.log_deletions(request, [obj])
                    self.delete_through_service(obj)
            except self.refusals as exc:
                self.message_user(request, f"{obj}: {exc}", messages.ERROR)
            else:
                deleted += 1
        return deleted

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            _, name, description = actions["delete_selected"]
            actions[name] = (delete_selected_through_services, name, description)
        return actions


def delete_selected_through_services(modeladmin: ServiceAdminMixin, request, queryset):
    """Django's "delete selected" (its confirmation page and checks), deleting through the service.

    Django's own action deletes the whole queryset at once and then reports every object deleted;
    here each object is deleted (and logged) on its own and each refusal is reported."""
    if not request.POST.get("post"):
        return delete_selected(modeladmin, request, queryset)  # the confirmation page
    _, _, perms_needed, protected = modeladmin.get_deleted_objects(queryset, request)
    if protected:
        return delete_selected(modeladmin, request, queryset)  # "cannot delete", with the reasons
    if perms_needed:
        raise PermissionDenied
    deleted = modeladmin.delete_each(request, list(queryset), log=True)
    if deleted:
        modeladmin.message_user(request, f"Deleted {deleted} {model_ngettext(modeladmin.opts, deleted)}.",
                                messages.SUCCESS)
    return None


# -- users and roles ------------------------------------------------------------------------------


for model in (User, Group, TokenProxy):
    try:
        admin.site.unregister(model)
    except NotRegistered:
        pass


class AuditedPasswordChangeForm(AdminPasswordChangeForm):
    """Admin's "change password" through `reset_password`: audited, and the user's API token goes."""

    def save(self, commit: bool = True):  # noqa: ARG002 - always through the service
        usable = self.cleaned_data["set_usable_password"]
        services.reset_password(self.user, self.cleaned_data["password1"] if usable else None)
        return self.user


@admin.register(User)
class AuditedUserAdmin(ServiceAdminMixin, NotFoundAdminMixin, UserAdmin):
    """Users as in the console: only users whose rights are a subset of yours can be changed, and
    only roles and permissions you hold can be given."""

    change_password_form = AuditedPasswordChangeForm
    readonly_fields = ("last_login", "date_joined")

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(username=guardian_settings.ANONYMOUS_USER_NAME)

    def has_change_permission(self, request, obj=None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or selectors.may_administer(request.user, obj))

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.pk == request.user.pk:
            return False  # nobody deletes themselves (as nobody disables themselves in the console)
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or selectors.may_administer(request.user, obj))

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly.append("is_superuser")  # only a superuser makes another
        if obj is not None and obj.pk == request.user.pk:
            readonly.append("is_active")
        return readonly

    def formfield_for_manytomany(self, db_field, request=None, **kwargs):
        if db_field.name == "groups":
            kwargs["queryset"] = Group.objects.filter(
                pk__in=[g.pk for g in selectors.assignable_groups(request.user)]
            ).order_by("name")
        elif db_field.name == "user_permissions":
            kwargs["queryset"] = selectors.grantable_permissions(request.user).select_related("content_type")
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_through_service(self, request, obj, form, change: bool):
        data = form.cleaned_data
        if not change:
            usable = data.get("set_usable_password", True)
            return services.create_user(username=data["username"], password=data["password1"] if usable else None)
        fields = {name: data[name] for name in services.USER_FIELDS if name in data}
        return services.update_user(obj, groups=data.get("groups"), permissions=data.get("user_permissions"),
                                    **fields)

    def delete_through_service(self, obj) -> None:
        services.delete_user(obj)


@admin.register(Group)
class AuditedGroupAdmin(ServiceAdminMixin, NotFoundAdminMixin, GroupAdmin):
    """Roles: custom ones are made here. Built-in roles keep their names and cannot be deleted; a
    role can be changed only by someone holding all of its permissions, and given only those."""

    refusals = (services.BuiltInRole,)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.name in ROLE_NAMES:
            readonly.append("name")
        return readonly

    def has_change_permission(self, request, obj=None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or selectors.may_change_role(request.user, obj))

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.name in ROLE_NAMES:
            return False
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or selectors.may_change_role(request.user, obj))

    def formfield_for_manytomany(self, db_field, request=None, **kwargs):
        if db_field.name == "permissions":
            kwargs["queryset"] = selectors.grantable_permissions(request.user)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_through_service(self, request, obj, form, change: bool):
        data = form.cleaned_data
        return services.save_role(name=data.get("name", obj.name), permissions=data["permissions"],
                                  group=obj if change else None)

    def delete_through_service(self, obj) -> None:
        services.delete_role(obj)
