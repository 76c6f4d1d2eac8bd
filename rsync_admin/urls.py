"""URLs: the console at / (users, my account and access panels from `accounts.urls`), the audit log
under /audit/, the REST API under /api/, Django admin under /admin/."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.forms import AdminLoginForm, LoginForm

from .api import router

admin.site.login_form = AdminLoginForm
admin.site.site_header = "Data Rsync administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="accounts/login.html", authentication_form=LoginForm),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("tasks.api.urls")),
    path("api/", include(router.urls)),
    path("audit/", include("audit.urls")),
    path("", include("accounts.urls")),
    path("", include("tasks.urls")),
]
