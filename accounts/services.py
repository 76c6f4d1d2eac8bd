"""The verbs that change users, roles, grants and API tokens. Each writes its audit entry."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from guardian.shortcuts import assign_perm, get_perms, remove_perm
from rest_framework.authtoken.models import Token

from audit import context as audit_context
from audit import services as audit

from .permissions import perm_name
from .roles import GRANT_LEVELS, ROLE_NAMES

User = get_user_model()


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


@transaction.atomic
def create_user(*, username: str, password: str, email: str = "", roles: list[str] = ()) -> User:
    unknown = set(roles) - set(ROLE_NAMES) - set(Group.objects.values_list("name", flat=True))
    if unknown:
        raise ValueError(f"Unknown role(s): {', '.join(sorted(unknown))}.")
    user = User.objects.create_user(username=username, password=password, email=email)
    user.groups.set(Group.objects.filter(name__in=roles))
    audit.record(action="create", obj=user, diff={"roles": sorted(roles)})
    return user


@transaction.atomic
def set_roles(user, roles: list[str]) -> None:
    before = sorted(user.groups.values_list("name", flat=True))
    user.groups.set(Group.objects.filter(name__in=roles))
    after = sorted(user.groups.values_list("name", flat=True))
    if before != after:
        audit.record(action="update", obj=user, diff={"roles": [before, after]})


@transaction.atomic
def set_active(user, active: bool) -> None:
    """Disable (or re-enable) a user; a disabled user's tokens stop working with them."""
    if user.is_active != active:
        user.is_active = active
        user.save(update_fields=["is_active"])
        audit.record(action="enable" if active else "disable", obj=user)


@transaction.atomic
def reset_password(user, new_password: str) -> None:
    user.set_password(new_password)
    user.save(update_fields=["password"])
    Token.objects.filter(user=user).delete()  # a reset also revokes API access
    audit.record(action="reset_password", obj=user, diff={"password": "changed"})


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


def generate_password() -> str:
    """A random password for a reset that is shown once."""
    return secrets.token_urlsafe(15)
