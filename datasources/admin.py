"""Django admin for sources and stores: secrets are write-only (shown as set / not set)."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from accounts.admin import ObjectPermissionAdminMixin

from .models import DataSource, EmbeddingModel, VectorStore


class SecretInput(forms.PasswordInput):
    """Never renders the stored value; an empty submission keeps it."""

    def __init__(self):
        super().__init__(render_value=False)


class _SecretForm(forms.ModelForm):
    secret_field = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields[self.secret_field]
        field.required = False
        field.widget = SecretInput()
        is_set = bool(self.instance.pk and getattr(self.instance, self.secret_field))
        field.help_text = "A value is set; type a new one to replace it." if is_set else "Not set."

    def clean(self):
        data = super().clean()
        if not data.get(self.secret_field) and self.instance.pk:
            data[self.secret_field] = getattr(self.instance, self.secret_field)  # keep the stored envelope
        return data


class DataSourceForm(_SecretForm):
    secret_field = "password"

    class Meta:
        model = DataSource
        fields = ["name", "kind", "host", "port", "database", "user", "password"]


class VectorStoreForm(_SecretForm):
    secret_field = "token"

    class Meta:
        model = VectorStore
        fields = ["name", "kind", "uri", "token"]


class EmbeddingModelForm(_SecretForm):
    secret_field = "api_key"

    class Meta:
        model = EmbeddingModel
        fields = ["name", "kind", "model_name", "base_url", "api_key", "dimension", "columns", "dotted_path",
                  "batch_size", "max_concurrency", "timeout_seconds"]


@admin.register(DataSource)
class DataSourceAdmin(ObjectPermissionAdminMixin, admin.ModelAdmin):
    form = DataSourceForm
    list_display = ["name", "kind", "host", "port", "database", "user", "last_check_ok", "last_check_at"]
    list_filter = ["kind", "last_check_ok"]
    search_fields = ["name", "host", "database"]
    readonly_fields = ["last_check_ok", "last_check_at", "last_check_report", "created_at", "updated_at"]


@admin.register(VectorStore)
class VectorStoreAdmin(ObjectPermissionAdminMixin, admin.ModelAdmin):
    form = VectorStoreForm
    list_display = ["name", "kind", "uri", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "uri"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    """Vectorizers a task can choose instead of the bundled model; API keys are write-only."""

    form = EmbeddingModelForm
    list_display = ["name", "kind", "model_name", "base_url", "dimension", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "model_name", "base_url"]
    readonly_fields = ["created_at", "updated_at"]
