"""The built-in roles: groups with model-wide permission sets.

Admins (and Super admins) hold model-wide permissions, so they see and change every object.
Operators and Viewers hold none on sources, stores and tasks: they see and change only the
objects granted to them (django-guardian object permissions, to them or to their groups).

Staff status (the key to Django admin) follows the administrator roles (`STAFF_ROLES`): it is
given with the first of them and taken with the last. Operators and Viewers work in the console;
a Super admin may still let one into Django admin by ticking "staff status", where they see and
change exactly what the console lets them (the same permission path).
"""

from __future__ import annotations

SUPER_ADMIN, ADMIN, OPERATOR, VIEWER = "Super admin", "Admin", "Operator", "Viewer"
ROLE_NAMES = (SUPER_ADMIN, ADMIN, OPERATOR, VIEWER)
STAFF_ROLES = (SUPER_ADMIN, ADMIN)

_MANAGED = ("datasources.datasource", "datasources.vectorstore", "tasks.synctask")
_ALL_ON_MANAGED = [f"{label.split('.')[0]}.{action}_{label.split('.')[1]}"
                   for label in _MANAGED for action in ("add", "change", "delete", "view")]
_USERS = ["auth.add_user", "auth.change_user", "auth.view_user", "auth.view_group"]
# Vectorizers have no object grants: administrators manage them (in Django admin).
_VECTORIZERS = [f"datasources.{action}_embeddingmodel" for action in ("add", "change", "delete", "view")]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    SUPER_ADMIN: [
        *_ALL_ON_MANAGED, "tasks.run_synctask", "tasks.view_syncrun", "tasks.view_deadletter", *_VECTORIZERS,
        *_USERS, "auth.delete_user", "auth.add_group", "auth.change_group", "auth.delete_group",
        "audit.view_auditevent", "audit.export_auditevent",
    ],
    ADMIN: [*_ALL_ON_MANAGED, "tasks.run_synctask", "tasks.view_syncrun", "tasks.view_deadletter", *_VECTORIZERS,
            *_USERS],
    # Operators may create sources, stores and tasks (they get object rights on what they create)
    # and work with what they are granted.
    OPERATOR: ["datasources.add_datasource", "datasources.add_vectorstore", "tasks.add_synctask"],
    VIEWER: [],
}

# Object permissions handed out by "grant" on an object's page, per level.
GRANT_LEVELS = {
    "view": ("view",),
    "operate": ("view", "run"),  # tasks only: start, stop, re-snapshot
    "manage": ("view", "change", "delete", "run"),
}


def sync_role_groups(apps=None) -> None:
    """Create or refresh the role groups (used by the data migration and by tests)."""
    from django.apps import apps as global_apps

    registry = apps or global_apps
    Group = registry.get_model("auth", "Group")
    Permission = registry.get_model("auth", "Permission")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            found = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if found is None:
                raise LookupError(f"permission {perm} does not exist")
            wanted.append(found)
        group.permissions.set(wanted)
