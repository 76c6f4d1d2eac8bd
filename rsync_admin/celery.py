"""The Celery app shared by workers and beat."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rsync_admin.settings")

app = Celery("rsync_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The tasks app keeps its Celery jobs in `tasks/jobs.py` (a `tasks/tasks.py` would read `tasks.tasks`).
app.autodiscover_tasks(related_name="jobs")
