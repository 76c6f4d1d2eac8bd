"""Django admin for sources, stores and vectorizers: secrets are write-only (shown as set / not
set); saving and deleting go through `datasources.services` (audited, like the console)."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from accounts.admin import NotFoundAdminMixin, ObjectPermissionAdminMixin, ServiceAdminMixin

from . import services
from .models import DataSource, EmbeddingModel, VectorStore


class SecretInput(forms.PasswordInput):
    """Never renders the stored value; an empty submission keeps it."""

    def __init__(self):
        super().__init__(render_value=False)


class _SecretForm(forms.ModelForm):
    """A write-only secret (`secret_field`) and a `clear_<secret_field>` box to remove it."""

    secret_field = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields.get(self.secret_field)
        if field is None:  # a view-only page: the admin shows `secret_state` instead
            return
        field.required = False
        field.widget = SecretInput()
        is_set = bool(self.instance.pk and getattr(self.instance, self.secret_field))
        field.help_text = "A value is set; type a new one to replace it." if is_set else "Not set."

    def secret_value(self) -> str | None:
        """What to hand the service: None keeps the stored secret, "" removes it."""
        if self.cleaned_data.get(f"clear_{self.secret_field}"):
            return ""
        return self.cleaned_data.get(self.secret_field) or (None if self.instance.pk else "")


class DataSourceForm(_SecretForm):
    secret_field = "password"
    clear_password = forms.BooleanField(required=False, label="Remove the stored password")

    class Meta:
        model = DataSource
        fields = ["name", "kind", "host", "port", "database", "user", "password"]


class VectorStoreForm(_SecretForm):
    secret_field = "token"
    clear_token = forms.BooleanField(required=False, label="Remove the stored token")

    class Meta:
        model = VectorStore
        fields = ["name", "kind", "uri", "token"]


class EmbeddingModelForm(_SecretForm):
    secret_field = "api_key"
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored API key")

    class Meta:
        model = EmbeddingModel
        fields = ["name", "kind", "model_name", "base_url", "api_key", "dimension", "columns", "dotted_path",
                  "batch_size", "max_concurrency", "timeout_seconds"]


class _ThroughServices(ServiceAdminMixin):
    """Names are fixed once saved: the services (and config files) find objects by name."""

    refusals = (services.InUse,)
    save_service = delete_service = None  # set by each admin: the service functions
    service_fields: tuple[str, ...] = ()

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        return [*readonly, "name"] if obj is not None else readonly

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            # A view-only page shows every field as text: the secret's envelope would be shown too.
            secret = self.form.secret_field
            fields = [name for name in fields if name not in (secret, f"clear_{secret}")] + ["secret_state"]
        return fields

    @admin.display(description="Secret")
    def secret_state(self, obj) -> str:
        return "set" if getattr(obj, self.form.secret_field) else "not set"

    def save_through_service(self, request, obj, form, change: bool):
        data = form.cleaned_data
        fields = {name: data[name] for name in self.service_fields if name in data}
        return self.save_service(name=obj.name if change else data["name"],
                                 **{form.secret_field: form.secret_value()}, **fields)

    def delete_through_service(self, obj) -> None:
        self.delete_service(obj)


@admin.register(DataSource)
class DataSourceAdmin(_ThroughServices, ObjectPermissionAdminMixin, admin.ModelAdmin):
    form = DataSourceForm
    save_service = staticmethod(services.save_source)
    delete_service = staticmethod(services.delete_source)
    service_fields = services.SOURCE_FIELDS
    list_display = ["name", "kind", "host", "port", "database", "user", "last_check_ok", "last_check_at"]
    list_filter = ["kind", "last_check_ok"]
    search_fields = ["name", "host", "database"]
    readonly_fields = ["last_check_ok", "last_check_at", "last_check_report", "created_at", "updated_at"]


@admin.register(VectorStore)
class VectorStoreAdmin(_ThroughServices, ObjectPermissionAdminMixin, admin.ModelAdmin):
    form = VectorStoreForm
    save_service = staticmethod(services.save_store)
    delete_service = staticmethod(services.delete_store)
    service_fields = services.STORE_FIELDS
    list_display = ["name", "kind", "uri", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "uri"]
    readonly_fields = ["last_check_ok", "last_check_at", "last_check_report", "created_at", "updated_at"]


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(_ThroughServices, NotFoundAdminMixin, admin.ModelAdmin):
    """Vectorizers a task can choose instead of the bundled model; API keys are write-only.

    They have no object grants: the model-wide rights of the administrator roles decide."""

    form = EmbeddingModelForm
    save_service = staticmethod(services.save_embedding_model)
    delete_service = staticmethod(services.delete_embedding_model)
    service_fields = services.EMBEDDING_MODEL_FIELDS
    list_display = ["name", "kind", "model_name", "base_url", "dimension", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "model_name", "base_url"]
    readonly_fields = ["created_at", "updated_at"]
