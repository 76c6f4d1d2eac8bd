"""Administrators manage vectorizers (embedding models), and the administrator roles carry staff
status (the key to Django admin): refresh the role groups and give staff status to the users who
already hold an administrator role."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def forwards(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from accounts.roles import STAFF_ROLES, sync_role_groups

    sync_role_groups(apps)
    User = apps.get_model("auth", "User")
    User.objects.filter(groups__name__in=STAFF_ROLES, is_staff=False).update(is_staff=True)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_roles"),
        ("datasources", "0004_vectorstore_last_check_at_vectorstore_last_check_ok_and_more"),
    ]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
