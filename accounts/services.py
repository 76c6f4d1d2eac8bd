"""The verbs that change users, roles, grants and API tokens. Each writes its audit entry.

The console pages and Django admin both change users and roles through these functions, so every
change is audited the same way wherever it is made.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from guardian.shortcuts import assign_perm, get_perms, remove_perm
from rest_framework.authtoken.models import Token

from audit import context as audit_context
from audit import services as audit

from .permissions import perm_name
from .roles import GRANT_LEVELS, ROLE_NAMES, STAFF_ROLES

User = get_user_model()

# What Django admin's user form may change besides roles and permissions.
USER_FIELDS = ("username", "first_name", "last_name", "email", "is_active", "is_staff", "is_superuser")


class BuiltInRole(Exception):
    """The four built-in roles cannot be renamed or deleted (the product refers to them by name)."""


def _codenames(obj, level: str) -> list[str]:
    actions = GRANT_LEVELS[level]
    meta = obj._meta
    return [
        f"{action}_{meta.model_name}" for action in actions
        if action != "run" or meta.label_lower == "tasks.synctask"
    ]


@transaction.atomic
def grant(obj, *, to, level: str) -> None:
    """Give a user or group `level` rights (view, operate, manage) on one object."""
    if level not in GRANT_LEVELS:
        raise ValueError(f"Unknown level {level!r}; choose one of {', '.join(GRANT_LEVELS)}.")
    revoke(obj, to=to, record=False)
    for codename in _codenames(obj, level):
        assign_perm(codename, to, obj)
    who = f"group {to.name}" if isinstance(to, Group) else f"user {to.get_username()}"
    audit.record(action="grant", obj=obj, diff={"to": who, "level": level})


@transaction.atomic
def revoke(obj, *, to, record: bool = True) -> None:
    """Take every right on `obj` from a user or group."""
    for codename in get_perms(to, obj) if not isinstance(to, Group) else _group_perms(to, obj):
        remove_perm(codename, to, obj)
    if record:
        who = f"group {to.name}" if isinstance(to, Group) else f"user {to.get_username()}"
        audit.record(action="revoke", obj=obj, diff={"from": who})


def _group_perms(group: Group, obj) -> list[str]:
    from guardian.shortcuts import get_group_perms

    return list(get_group_perms(group, obj))


@transaction.atomic
def grant_creator(obj) -> None:
    """Whoever creates an object without model-wide rights (an Operator) may manage it.

    Called by the service that creates `obj`, inside its transaction; the grant is recorded like
    any other."""
    actor = audit_context.current().actor
    if actor is None or not getattr(actor, "is_authenticated", False):
        return
    if actor.has_perm(perm_name(obj, "change")):
        return  # Admins already manage everything
    for codename in _codenames(obj, "manage"):
        assign_perm(codename, actor, obj)
    audit.record(action="grant", obj=obj, diff={"to": f"user {actor.get_username()}", "level": "manage",
                                                "reason": "creator"})


@transaction.atomic
def record_failed_sign_in(*, username: str, request=None, reason: str = "") -> None:
    """Record a refused sign-in: a wrong password (from Django's `user_login_failed`) or an attempt
    the throttle turned away before any password was checked (`reason="throttled"`)."""
    username = str(username)[:150]
    user = User.objects.filter(username=username).first()
    context = None
    if request is not None:  # an unauthenticated attempt: no actor, whatever the session holds
        base = audit_context.AuditContext.from_request(request)
        context = audit_context.AuditContext(ip_address=base.ip_address, user_agent=base.user_agent,
                                             request_id=base.request_id)
    audit.record(
        action="login_failed", object_type="auth.user", object_id=str(user.pk) if user else "",
        object_label=username, actor=None, context=context, diff={"reason": reason} if reason else None,
    )


def _follow_staff_roles(user, before: Iterable[str], after: Iterable[str]) -> dict:
    """Staff status follows the administrator roles: given with the first one, taken with the last.

    Only a change of administrator role moves it, so staff status a Super admin ticked by hand for
    an Operator stays. Returns the audit diff of the change (empty when there is none)."""
    had, has = bool(set(before) & set(STAFF_ROLES)), bool(set(after) & set(STAFF_ROLES))
    staff = user.is_staff
    if has and not had:
        staff = True
    elif had and not has and not user.is_superuser:
        staff = False
    if staff == user.is_staff:
        return {}
    user.is_staff = staff
    user.save(update_fields=["is_staff"])
    return {"is_staff": [not staff, staff]}


@transaction.atomic
def create_user(
    *, username: str, password: str | None, email: str = "", roles: Iterable[str] = ()
) -> User:
    """A new user with `roles`; `password=None` makes one that cannot sign in with a password."""
    roles = list(roles)
    unknown = set(roles) - set(ROLE_NAMES) - set(Group.objects.values_list("name", flat=True))
    if unknown:
        raise ValueError(f"Unknown role(s): {', '.join(sorted(unknown))}.")
    user = User.objects.create_user(username=username, password=password, email=email)
    user.groups.set(Group.objects.filter(name__in=roles))
    diff = {"roles": sorted(roles)}
    if _follow_staff_roles(user, [], roles):
        diff["is_staff"] = True
    audit.record(action="create", obj=user, diff=diff)
    return user


@transaction.atomic
def set_roles(user, roles: list[str]) -> None:
    before = sorted(user.groups.values_list("name", flat=True))
    user.groups.set(Group.objects.filter(name__in=roles))
    after = sorted(user.groups.values_list("name", flat=True))
    if before != after:
        diff = {"roles": [before, after], **_follow_staff_roles(user, before, after)}
        audit.record(action="update", obj=user, diff=diff)


def _permission_names(permissions) -> list[str]:
    return sorted(f"{p.content_type.app_label}.{p.codename}" for p in permissions)


def _user_state(user) -> dict:
    """What an update of a user is audited on: its fields, roles and direct permissions."""
    return {
        **audit.snapshot(user, USER_FIELDS),
        "roles": sorted(user.groups.values_list("name", flat=True)),
        "permissions": _permission_names(user.user_permissions.select_related("content_type")),
    }


@transaction.atomic
def update_user(
    user, *, groups: Iterable[Group] | None = None, permissions: Iterable[Permission] | None = None, **fields
) -> User:
    """Change a user's fields (`USER_FIELDS`), roles and direct permissions in one audited step.

    `groups` / `permissions` None leaves them as they are. Staff status follows the administrator
    roles (see `_follow_staff_roles`) unless `is_staff` itself is changed here. A change of the
    active flag alone is recorded as enable or disable, as the console's switch records it."""
    unknown = set(fields) - set(USER_FIELDS)
    if unknown:
        raise ValueError(f"unknown user fields: {', '.join(sorted(unknown))}")
    user = User.objects.select_for_update().get(pk=user.pk)
    before = _user_state(user)
    for key, value in fields.items():
        setattr(user, key, value)
    user.save()
    if groups is not None:
        user.groups.set(groups)
        if fields.get("is_staff", before["is_staff"]) == before["is_staff"]:
            _follow_staff_roles(user, before["roles"], user.groups.values_list("name", flat=True))
    if permissions is not None:
        user.user_permissions.set(permissions)
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)
    diff = audit.model_diff(before, _user_state(user))
    if diff:
        action = "update"
        if set(diff) == {"is_active"}:
            action = "enable" if user.is_active else "disable"
        audit.record(action=action, obj=user, diff=diff)
    return user


@transaction.atomic
def delete_user(user) -> None:
    """Delete a user with their grants and token; their audit events stay (with their name)."""
    state = _user_state(user)
    audit.record(action="delete", obj=user, diff=audit.model_diff(state, None))
    user.delete()


@transaction.atomic
def set_active(user, active: bool) -> None:
    """Disable (or re-enable) a user; a disabled user's tokens stop working with them."""
    if user.is_active != active:
        user.is_active = active
        user.save(update_fields=["is_active"])
        audit.record(action="enable" if active else "disable", obj=user)


@transaction.atomic
def reset_password(user, new_password: str | None) -> None:
    """Set a new password; None turns password sign-in off for the user."""
    if new_password is None:
        user.set_unusable_password()
    else:
        user.set_password(new_password)
    user.save(update_fields=["password"])
    Token.objects.filter(user=user).delete()  # a reset also revokes API access
    audit.record(action="reset_password", obj=user, diff={"password": "changed" if new_password else "removed"})


@transaction.atomic
def issue_token(user) -> str:
    """A new API token for `user` (replacing the old one); shown once."""
    Token.objects.filter(user=user).delete()
    token = Token.objects.create(user=user)
    audit.record(action="issue_token", obj=user)
    return token.key


@transaction.atomic
def revoke_token(user) -> bool:
    deleted, _ = Token.objects.filter(user=user).delete()
    if deleted:
        audit.record(action="revoke_token", obj=user)
    return bool(deleted)


AUDITOR_CODENAMES = (("audit", "view_auditevent"), ("audit", "export_auditevent"))


@transaction.atomic
def set_auditor(user, auditor: bool) -> bool:
    """Give (or take) the right to read and export the audit log, directly to one user.

    Returns whether anything changed; a change is recorded. Rights the user holds through a role
    (Super admin) are not touched."""
    wanted = [
        Permission.objects.get(content_type__app_label=app_label, codename=codename)
        for app_label, codename in AUDITOR_CODENAMES
    ]
    held = set(user.user_permissions.filter(pk__in=[p.pk for p in wanted]).values_list("pk", flat=True))
    if auditor and held != {p.pk for p in wanted}:
        user.user_permissions.add(*wanted)
    elif not auditor and held:
        user.user_permissions.remove(*wanted)
    else:
        return False
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)
    audit.record(action="grant_auditor" if auditor else "revoke_auditor", obj=user,
                 diff={"permissions": [f"{a}.{c}" for a, c in AUDITOR_CODENAMES]})
    return True


# -- roles (groups) ----------------------------------------------------------------------------


def _role_state(group: Group) -> dict:
    return {"name": group.name,
            "permissions": _permission_names(group.permissions.select_related("content_type"))}


@transaction.atomic
def save_role(*, name: str, permissions: Iterable[Permission], group: Group | None = None) -> Group:
    """Create a role (a group of permissions), or rename `group` and set its permissions.

    Built-in roles keep their names (raises BuiltInRole)."""
    if group is None:
        group, before = Group(name=name), None
    else:
        group = Group.objects.select_for_update().get(pk=group.pk)
        before = _role_state(group)
        if group.name in ROLE_NAMES and name != group.name:
            raise BuiltInRole(f"The built-in role {group.name!r} cannot be renamed.")
    group.name = name
    group.full_clean()
    group.save()
    group.permissions.set(permissions)
    diff = audit.model_diff(before, _role_state(group))
    if before is None or diff:
        audit.record(action="create" if before is None else "update", obj=group, diff=diff)
    return group


@transaction.atomic
def delete_role(group: Group) -> None:
    """Delete a custom role; its members lose the rights it gave (they are named in the audit entry)."""
    if group.name in ROLE_NAMES:
        raise BuiltInRole(f"The built-in role {group.name!r} cannot be deleted.")
    state = _role_state(group)
    state["members"] = sorted(group.user_set.values_list("username", flat=True))
    audit.record(action="delete", obj=group, diff=audit.model_diff(state, None))
    group.delete()


def generate_password() -> str:
    """A random password for a reset that is shown once."""
    return secrets.token_urlsafe(15)
