"""Reads for the users pages and the access panels: users with their roles, who may administer
whom, and who holds grants on one object.

Who may administer whom: an actor may change a user only when the user's rights are a subset of the
actor's own (an Admin cannot take over a Super admin by resetting their password or issuing their
token), and may give only roles (groups) whose permissions they hold themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models import Exists, Model, OuterRef, Prefetch, Q, QuerySet
from guardian.conf import settings as guardian_settings
from guardian.shortcuts import get_groups_with_perms, get_users_with_perms
from rest_framework.authtoken.models import Token

from .permissions import can
from .roles import GRANT_LEVELS, ROLE_NAMES

User = get_user_model()

AUDITOR_PERMISSIONS = ("audit.view_auditevent", "audit.export_auditevent")

# The pages an access panel can sit on: kind in the URL -> (model label, its selector).
ACCESS_KINDS = {
    "source": "datasources.datasource",
    "store": "datasources.vectorstore",
    "task": "tasks.synctask",
}


# -- users ------------------------------------------------------------------------------------


def people() -> QuerySet:
    """Every user but guardian's stand-in for anonymous visitors (it cannot sign in)."""
    return User.objects.exclude(username=guardian_settings.ANONYMOUS_USER_NAME)


def users_list() -> QuerySet:
    """Every user with their groups and whether they hold an API token, by user name."""
    return (
        people().order_by("username")
        .prefetch_related(Prefetch("groups", queryset=Group.objects.order_by("name")))
        .annotate(has_token=Exists(Token.objects.filter(user=OuterRef("pk"))))
    )


def user_by_pk(pk: int) -> User | None:
    return users_list().filter(pk=pk).first()


def token_of(user) -> Token | None:
    return Token.objects.filter(user=user).first()


def group_names(user) -> list[str]:
    return sorted(group.name for group in user.groups.all())


def all_groups() -> list[Group]:
    """Roles first (in their order of rank), then any other groups by name."""
    groups = list(Group.objects.prefetch_related("permissions__content_type"))
    rank = {name: n for n, name in enumerate(ROLE_NAMES)}
    return sorted(groups, key=lambda g: (rank.get(g.name, len(rank)), g.name))


def _perm_strings(permissions) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in permissions}


def _rights(user) -> set[str]:
    """Everything a user holds model-wide: directly and through their groups (fresh from the database)."""
    direct = Permission.objects.filter(user=user).select_related("content_type")
    via_groups = Permission.objects.filter(group__user=user).select_related("content_type")
    return _perm_strings(direct) | _perm_strings(via_groups)


def may_administer(actor, target) -> bool:
    """May `actor` change `target` (roles, active flag, password, token)? Only when the target's
    rights are a subset of the actor's: nobody raises themselves by taking over a stronger account."""
    if actor is None or not actor.is_authenticated or not actor.is_active:
        return False
    if not actor.has_perm("auth.change_user"):
        return False
    if actor.is_superuser:
        return True
    if target.is_superuser:
        return False
    return _rights(target) <= _rights(actor)


def assignable_groups(actor) -> list[Group]:
    """The roles and groups `actor` may hand out: those whose permissions the actor holds."""
    if actor.is_superuser:
        return all_groups()
    held = _rights(actor)
    return [group for group in all_groups() if _perm_strings(group.permissions.all()) <= held]


def grantable_permissions(actor) -> QuerySet[Permission]:
    """The permissions `actor` may hand out (to a user directly or to a role): those they hold."""
    if actor.is_superuser:
        return Permission.objects.all()
    held = Permission.objects.filter(Q(user=actor) | Q(group__user=actor)).values("pk")
    return Permission.objects.filter(pk__in=held)


def may_change_role(actor, group: Group) -> bool:
    """May `actor` change or delete a role? Only when they hold every permission it gives (nobody
    widens a role, or takes apart one, that is stronger than themselves)."""
    if actor is None or not actor.is_authenticated or not actor.is_active:
        return False
    if actor.is_superuser:
        return True
    return _perm_strings(group.permissions.select_related("content_type")) <= _rights(actor)


def may_manage_auditors(actor) -> bool:
    """Auditor rights are handed out only by someone who holds them (and may change users)."""
    return actor.has_perm("auth.change_user") and all(actor.has_perm(p) for p in AUDITOR_PERMISSIONS)


def auditor_state(user) -> dict[str, bool]:
    """`granted`: the user holds the auditor permissions directly (what the Auditor switch gives);
    `effective`: they may read the log at all (directly or through a role)."""
    direct = _perm_strings(Permission.objects.filter(user=user).select_related("content_type"))
    return {
        "granted": all(p in direct for p in AUDITOR_PERMISSIONS),
        "effective": user.is_superuser or "audit.view_auditevent" in _rights(user),
    }


# -- grants on one object ---------------------------------------------------------------------


def access_model(kind: str) -> type[Model] | None:
    from django.apps import apps

    label = ACCESS_KINDS.get(kind)
    return apps.get_model(label) if label else None


def access_queryset(kind: str, user) -> QuerySet | None:
    """The objects of `kind` the user may see, through the app's own selector."""
    if kind == "source":
        from datasources.selectors import sources_for

        return sources_for(user)
    if kind == "store":
        from datasources.selectors import stores_for

        return stores_for(user)
    if kind == "task":
        from tasks.selectors import tasks_for

        return tasks_for(user)
    return None


def levels_for(obj: Model) -> list[str]:
    """The grant levels that make sense for `obj`: operate (run without changing) only for tasks."""
    return [level for level in GRANT_LEVELS if level != "operate" or obj._meta.label_lower == "tasks.synctask"]


def grantable_levels(actor, obj: Model) -> list[str]:
    """The levels `actor` may hand out on `obj`: those whose every action they may do themselves."""
    is_task = obj._meta.label_lower == "tasks.synctask"
    return [
        level for level in levels_for(obj)
        if all(can(actor, action, obj) for action in GRANT_LEVELS[level] if action != "run" or is_task)
    ]


def level_of(codenames) -> str:
    """The level a set of object permission codenames amounts to (the strongest one it covers)."""
    actions = {codename.split("_", 1)[0] for codename in codenames}
    if "change" in actions or "delete" in actions:
        return "manage"
    if "run" in actions:
        return "operate"
    if "view" in actions:
        return "view"
    return "custom"


@dataclass(frozen=True)
class Holder:
    kind: str  # "user" or "group"
    pk: int
    name: str
    level: str
    permissions: tuple[str, ...]
    active: bool = True


def object_access(obj: Model) -> list[Holder]:
    """Who holds object rights on `obj` directly (users, then groups), with their level.

    Model-wide rights (Admins, Super admins) are not grants and are not listed."""
    users = get_users_with_perms(obj, attach_perms=True, with_superusers=False, with_group_users=False)
    groups = get_groups_with_perms(obj, attach_perms=True)
    out = [
        Holder("user", u.pk, u.get_username(), level_of(perms), tuple(sorted(perms)), u.is_active)
        for u, perms in sorted(users.items(), key=lambda item: item[0].get_username())
    ]
    out += [
        Holder("group", g.pk, g.name, level_of(perms), tuple(sorted(perms)))
        for g, perms in sorted(groups.items(), key=lambda item: item[0].name)
    ]
    return out


def holder_of(obj: Model, kind: str, pk: str) -> User | Group | None:
    """The user or group (`kind`, `pk`) if they hold a grant on `obj`, else None."""
    if not str(pk).isdigit():
        return None
    if not any(h.kind == kind and h.pk == int(pk) for h in object_access(obj)):
        return None
    return principal_by_pk(kind, int(pk))


def usernames(limit: int = 500) -> list[str]:
    """Suggestions for the grant form (only for those who may see users)."""
    return list(people().filter(is_active=True).order_by("username").values_list("username", flat=True)[:limit])


def groupnames() -> list[str]:
    return [group.name for group in all_groups()]


def find_principal(kind: str, name: str) -> User | Group | None:
    """The user (by user name) or group (by name) a grant goes to, or None."""
    if kind == "user":
        return people().filter(username=name).first()
    if kind == "group":
        return Group.objects.filter(name=name).first()
    return None


def principal_by_pk(kind: str, pk: int) -> User | Group | None:
    if kind == "user":
        return User.objects.filter(pk=pk).first()
    if kind == "group":
        return Group.objects.filter(pk=pk).first()
    return None
