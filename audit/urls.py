"""The audit log pages (namespace "audit")."""

from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("", views.event_list, name="event-list"),
    path("export.csv", views.event_export, name="event-export"),
    path("verify/", views.verify, name="verify"),
]
