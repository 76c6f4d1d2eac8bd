"""Users pages, "My account" and the access panels (namespace "accounts")."""

from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("users/", views.user_list, name="user-list"),
    path("users/new/", views.user_create, name="user-create"),
    path("users/<int:pk>/", views.user_detail, name="user-detail"),
    path("users/<int:pk>/roles/", views.user_roles, name="user-roles"),
    path("users/<int:pk>/active/", views.user_active, name="user-active"),
    path("users/<int:pk>/password/", views.user_password, name="user-password"),
    path("users/<int:pk>/token/", views.user_token, name="user-token"),
    path("users/<int:pk>/token/revoke/", views.user_token_revoke, name="user-token-revoke"),
    path("users/<int:pk>/auditor/", views.user_auditor, name="user-auditor"),
    path("account/", views.my_account, name="my-account"),
    path("account/token/", views.my_token, name="my-token"),
    path("account/token/revoke/", views.my_token_revoke, name="my-token-revoke"),
    path("access/<slug:kind>/<int:pk>/", views.access, name="access"),
    path("access/<slug:kind>/<int:pk>/grant/", views.access_grant, name="access-grant"),
    path("access/<slug:kind>/<int:pk>/revoke/", views.access_revoke, name="access-revoke"),
]
