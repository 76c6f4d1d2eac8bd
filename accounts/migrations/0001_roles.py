"""The four built-in roles as groups with their permission sets."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from accounts.roles import sync_role_groups

    sync_role_groups(apps)


def remove_roles(apps, schema_editor):
    from accounts.roles import ROLE_NAMES

    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_NAMES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("datasources", "0001_initial"),
        ("tasks", "0002_alter_synctask_options"),
        ("audit", "0002_append_only_triggers"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
