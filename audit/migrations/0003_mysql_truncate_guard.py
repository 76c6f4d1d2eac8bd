"""Install the append-only guards again: MySQL/MariaDB databases migrated before the TRUNCATE
guard table existed get it now (installing is idempotent on every vendor)."""

from django.db import migrations


def install(apps, schema_editor):
    from audit import triggers

    triggers.install(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_triggers")]
    # 0002's reverse drops every guard, the one this adds included.
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
