"""The browser console (namespace "console"); data source and vector store pages come from
`datasources.urls`."""

from django.urls import include, path

from . import views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tasks/", views.task_list, name="task-list"),
    path("tasks/new/", views.task_form, name="task-create"),
    path("tasks/catalog/", views.task_catalog, name="task-catalog"),
    path("tasks/preview/", views.task_preview, name="task-preview"),
    path("tasks/<int:pk>/", views.task_detail, name="task-detail"),
    path("tasks/<int:pk>/edit/", views.task_form, name="task-edit"),
    path("tasks/<int:pk>/header/", views.task_header, name="task-header"),
    path("tasks/<int:pk>/runs/", views.task_runs, name="task-runs"),
    path("tasks/<int:pk>/start/", views.task_start, name="task-start"),
    path("tasks/<int:pk>/stop/", views.task_stop, name="task-stop"),
    path("tasks/<int:pk>/resnapshot/", views.task_resnapshot, name="task-resnapshot"),
    path("tasks/<int:pk>/delete/", views.task_delete, name="task-delete"),
    path("tasks/<int:pk>/search/", views.task_search, name="task-search"),
    path("tasks/<int:pk>/dead-letters/", views.task_dead_letters, name="task-dead-letters"),
    path("tasks/<int:pk>/dead-letters/replay/", views.task_dead_letters_action, {"verb": "replay"},
         name="task-dead-letters-replay"),
    path("tasks/<int:pk>/dead-letters/discard/", views.task_dead_letters_action, {"verb": "discard"},
         name="task-dead-letters-discard"),
    path("", include("datasources.urls")),
]
