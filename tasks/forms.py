"""The task form: source, then table and columns from the source's live catalog.

The catalog is read through `tasks.lookups.table_catalog`; a source that cannot be reached makes
its message a form error (never a 500). Saving goes through `tasks.services.save_task`.
"""

from __future__ import annotations

import string

import pymysql
from django import forms
from django.core.exceptions import ValidationError
from django.urls import reverse

from datasources.connectors.base import ConnectorError
from datasources.connectors.milvus import RESERVED_FIELDS
from datasources.selectors import sources_for, stores_for

from .lookups import table_catalog
from .models import SyncTask
from .services import TASK_FIELDS, save_task

# The fields a preview needs (see `TaskDraft`).
PREVIEW_FIELDS = ("source", "table", "text_template", "payload_columns")

# What reading a catalog or rows can raise besides a bug; ValueError: no connector for the source's kind.
CATALOG_ERRORS = (ConnectorError, pymysql.err.MySQLError, OSError, ValueError)


def load_catalog(source) -> tuple[dict[str, list[dict]], str]:
    """The source's tables and columns, or an empty catalog and the reason it could not be read."""
    try:
        return table_catalog(source), ""
    except CATALOG_ERRORS as exc:
        return {}, str(exc) or type(exc).__name__


def template_columns(text_template: str) -> list[str]:
    """Column names the template uses; ValueError when it is not a valid template."""
    list(string.Formatter().parse(text_template))  # raises ValueError on unbalanced braces
    return SyncTask(text_template=text_template).template_columns


OPTIONAL_WITH_DEFAULTS = ("capture", "poll_interval", "overlap_seconds", "chunk_size", "chunk_overlap")


class TaskForm(forms.ModelForm):
    table = forms.ChoiceField(choices=[], help_text="Tables of the source, read live from its catalog.")
    payload_columns = forms.MultipleChoiceField(
        choices=[], required=False, widget=forms.CheckboxSelectMultiple,
        label="Payload columns", help_text="Stored next to each vector and returned with search hits.",
    )
    collection = forms.CharField(
        required=False, max_length=255, help_text="The collection in the vector store; empty uses the task name.",
    )
    batch_size = forms.IntegerField(min_value=1, max_value=100_000, initial=256)

    class Meta:
        model = SyncTask
        fields = [
            "name", "source", "store", "table", "text_template", "payload_columns", "embedding_model",
            "collection", "mode", "batch_size", "capture", "updated_at_column", "soft_delete_column",
            "poll_interval", "overlap_seconds", "chunk_size", "chunk_overlap",
        ]
        labels = {"text_template": "Text template", "embedding_model": "Embedding model", "store": "Vector store"}
        help_texts = {
            "name": "Letters, digits, - and _. Cannot be changed later.",
            "text_template": "Column names in braces, e.g. {title} and {body} on their own lines: this text is "
            "embedded. Click a column of the table to insert it.",
        }
        widgets = {"text_template": forms.Textarea(attrs={"rows": 5, "spellcheck": "false"})}

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in OPTIONAL_WITH_DEFAULTS:  # older clients and scripts do not send these
            self.fields[name].required = False
        self.fields["source"].queryset = sources_for(user)
        self.fields["store"].queryset = stores_for(user)
        if self.instance.pk:
            self.fields["name"].disabled = True
            self.initial["payload_columns"] = list(self.instance.payload_columns)
        self._live_catalog_pickers()
        self.source = self._chosen_source()
        self.catalog, self.catalog_error = load_catalog(self.source) if self.source else ({}, "")
        self.table_name = self._value("table") or ""
        self.columns: list[dict] = self.catalog.get(self.table_name, [])
        tables = sorted(self.catalog)
        if self.catalog_error and self.table_name and self.table_name not in tables:
            tables.append(self.table_name)  # keep showing the saved table while the source is down
        self.fields["table"].choices = [("", "Pick a table" if tables or not self.source else "(no tables)")] + [
            (t, t) for t in tables
        ]
        names = [c["name"] for c in self.columns]
        chosen = [c for c in (self._values("payload_columns") or []) if c not in names]
        self.fields["payload_columns"].choices = [
            (c["name"], f"{c['name']} ({c['type']}{', primary key' if c['primary_key'] else ''})")
            for c in self.columns
        ] + [(c, c) for c in chosen if self.catalog_error]

    def _live_catalog_pickers(self) -> None:
        """Changing the source or the table reloads the table and column pickers (htmx)."""
        common = {
            "hx-get": reverse("console:task-catalog"), "hx-target": "#catalog", "hx-swap": "outerHTML",
            "hx-trigger": "change", "hx-indicator": "#catalog-spinner",
        }
        self.fields["source"].widget.attrs.update(
            common, **{"hx-include": "#catalog [name='table'], #catalog [name='payload_columns']"}
        )
        self.fields["table"].widget.attrs.update(
            common, **{"hx-include": "#id_source, #catalog [name='payload_columns']"}
        )

    # -- what the user picked (bound data first, then the saved task) ---------------------------

    def _value(self, name: str):
        if self.is_bound:
            return self.data.get(self.add_prefix(name))
        if name in self.initial:
            return self.initial[name]
        return getattr(self.instance, name, None) if self.instance.pk else None

    def _values(self, name: str) -> list:
        if not self.is_bound:
            return list(self.initial.get(name) or [])
        if hasattr(self.data, "getlist"):
            return self.data.getlist(self.add_prefix(name))
        return list(self.data.get(self.add_prefix(name)) or [])

    def _chosen_source(self):
        value = self._value("source")
        if value is None or value == "":
            return None
        if hasattr(value, "pk"):
            return value
        try:
            return self.fields["source"].queryset.filter(pk=int(value)).first()
        except (TypeError, ValueError):
            return None

    @property
    def primary_key(self) -> list[str]:
        return [c["name"] for c in self.columns if c["primary_key"]]

    @property
    def table_has_no_primary_key(self) -> bool:
        return bool(self.table_name and self.columns and not self.primary_key)

    # -- validation against the catalog ---------------------------------------------------------

    def clean(self) -> dict:
        data = super().clean()
        for name in OPTIONAL_WITH_DEFAULTS:
            if data.get(name) in (None, ""):
                data[name] = SyncTask._meta.get_field(name).get_default()
        if self.catalog_error:
            self.add_error("source", f"Cannot read the tables of {self.source}: {self.catalog_error}")
            return data
        names = [c["name"] for c in self.columns]
        template = data.get("text_template")
        if template is not None and data.get("table"):
            try:
                used = template_columns(template)
            except ValueError as exc:
                self.add_error("text_template", f"Not a valid template: {exc}.")
            else:
                unknown = [c for c in used if c not in names]
                if unknown:
                    self.add_error("text_template", (
                        f"Unknown column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                        f"{data['table']} has {', '.join(names)}."
                    ))
                elif not used:
                    self.add_error("text_template", "Name at least one column in braces, e.g. {title}.")
        reserved = [c for c in data.get("payload_columns") or [] if c in RESERVED_FIELDS]
        if reserved:
            self.add_error("payload_columns", f"{', '.join(reserved)} clash with names the store reserves.")
        return data

    # -- saving and previewing -------------------------------------------------------------------

    def save(self, commit: bool = True) -> SyncTask | None:  # noqa: ARG002 - always through the service
        data = self.cleaned_data
        name = self.instance.name if self.instance.pk else data["name"]
        fields = {key: data[key] for key in TASK_FIELDS if key in data}
        fields["payload_columns"] = list(data.get("payload_columns") or [])
        try:
            return save_task(name=name, source=data["source"], store=data["store"], **fields)
        except ValidationError as exc:
            self.add_error(None, exc)
            return None

    @property
    def preview_errors(self) -> dict[str, list[str]]:
        """Errors on the fields a preview needs (the others do not matter for it)."""
        return {name: errors for name, errors in self.errors.items() if name in PREVIEW_FIELDS}

    def draft(self) -> SyncTask:
        """An unsaved task holding what the preview needs (everything else at its defaults).

        `lookups.preview` takes a `TaskDraft` or a task; an unsaved `SyncTask` also carries the
        attributes the mapping reads beyond the draft's fields (vectorizer, chunking), so the
        preview renders exactly what a saved task with these fields would embed.
        """
        data = self.cleaned_data
        return SyncTask(
            source=data["source"], table=data["table"], text_template=data["text_template"],
            payload_columns=list(data.get("payload_columns") or []), collection="preview",
        )
