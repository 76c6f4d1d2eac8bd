"""Console pages for data sources and vector stores (included into the "console" namespace)."""

from django.urls import path

from . import views

urlpatterns = [
    path("sources/", views.source_list, name="source-list"),
    path("sources/new/", views.source_form, name="source-create"),
    path("sources/<int:pk>/edit/", views.source_form, name="source-edit"),
    path("sources/<int:pk>/delete/", views.source_delete, name="source-delete"),
    path("sources/<int:pk>/test/", views.source_test, name="source-test"),
    path("stores/", views.store_list, name="store-list"),
    path("stores/new/", views.store_form, name="store-create"),
    path("stores/<int:pk>/edit/", views.store_form, name="store-edit"),
    path("stores/<int:pk>/delete/", views.store_delete, name="store-delete"),
    path("stores/<int:pk>/test/", views.store_test, name="store-test"),
]
