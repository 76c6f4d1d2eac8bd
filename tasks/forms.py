"""The task form: source, then table and columns from the source's live catalog.

The catalog is read through `tasks.lookups.table_catalog`. The rules a task must follow are
`tasks.validation`'s, the same the API and config files apply: `clean()` runs them to show each
problem on its field, and saving goes through `tasks.services.save_task`, which runs them again.
A source that cannot be reached does not stop the save: the table and payload pickers become
text inputs, and the saved task carries a warning (starting it checks everything again).
"""

from __future__ import annotations

from django import forms
from django.urls import reverse

from datasources.embedders import DEFAULT_MODEL
from datasources.selectors import sources_for, stores_for

from .filters import FilterError, format_lines, parse_lines
from .lookups import table_catalog
from .models import SyncTask
from .services import TASK_FIELDS, save_task
from .validation import CATALOG_ERRORS, TaskInvalid, validate_task

# The fields a preview needs (see `TaskDraft`).
PREVIEW_FIELDS = ("source", "table", "text_template", "payload_columns", "row_filter")
INDEX_FIELDS = ("index_type", "metric", "hnsw_m", "hnsw_ef_construction", "ivf_nlist")


def load_catalog(source) -> tuple[dict[str, list[dict]], str]:
    """The source's tables and columns, or an empty catalog and the reason it could not be read."""
    try:
        return table_catalog(source), ""
    except CATALOG_ERRORS as exc:
        return {}, str(exc) or type(exc).__name__


# Older clients and scripts do not send these; the model's defaults apply.
OPTIONAL_WITH_DEFAULTS = ("capture", "poll_interval", "overlap_seconds", "chunk_size", "chunk_overlap", *INDEX_FIELDS)


class _CatalogChoice(forms.ChoiceField):
    """A table picked from the live catalog. Whether it exists is the service's rule (one message
    everywhere), not the picker's."""

    def valid_value(self, value: str) -> bool:
        return True


class _CatalogChoices(forms.MultipleChoiceField):
    """Columns picked from the live catalog; checked by the service, like `_CatalogChoice`."""

    def valid_value(self, value: str) -> bool:
        return True


class _ColumnsInput(forms.TextInput):
    """Column names typed as "a, b" (or sent as a list by a page that still had checkboxes)."""

    def value_from_datadict(self, data, files, name):
        if hasattr(data, "getlist"):
            return ", ".join(data.getlist(name))
        value = data.get(name)
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def format_value(self, value):
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return super().format_value(value)


class _ColumnList(forms.CharField):
    widget = _ColumnsInput

    def to_python(self, value) -> list[str]:
        return [name.strip() for name in super().to_python(value).split(",") if name.strip()]


class _RowFilterField(forms.CharField):
    """A row filter written one condition a line (`stars >= 10`), stored as its JSON list."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false",
                                   "placeholder": "status = published\nstars >= 10\ndeleted_at is null"})

    def prepare_value(self, value):
        return format_lines(value) if isinstance(value, list) else value

    def to_python(self, value) -> list[dict]:
        try:
            return parse_lines(super().to_python(value))
        except FilterError as exc:
            raise forms.ValidationError(str(exc)) from None


class TaskForm(forms.ModelForm):
    table = _CatalogChoice(choices=[], help_text="Tables of the source, read live from its catalog.")
    payload_columns = _CatalogChoices(
        choices=[], required=False, widget=forms.CheckboxSelectMultiple,
        label="Payload columns", help_text="Stored next to each vector and returned with search hits.",
    )
    collection = forms.CharField(
        required=False, max_length=255, help_text="The collection in the vector store; empty uses the task name.",
    )
    row_filter = _RowFilterField(
        required=False, label="Row filter",
        help_text="Keep only rows for which every line holds: column, operator (= != < <= > >= in, not in, "
                  "is null, is not null) and value. A row that stops matching is removed from the collection. "
                  "Empty keeps every row.",
    )

    class Meta:
        model = SyncTask
        fields = [
            "name", "source", "store", "table", "text_template", "payload_columns", "embedding_model", "vectorizer",
            "collection", "mode", "batch_size", "capture", "updated_at_column", "soft_delete_column",
            "poll_interval", "overlap_seconds", "chunk_size", "chunk_overlap", "row_filter", *INDEX_FIELDS,
        ]
        labels = {"text_template": "Text template", "embedding_model": "Embedding model", "store": "Vector store",
                  "index_type": "Index type", "metric": "Metric"}
        help_texts = {
            "name": "Letters, digits, - and _. Cannot be changed later.",
            "text_template": "Column names in braces, e.g. {title} and {body} on their own lines: this text is "
            "embedded. Click a column of the table to insert it.",
            "vectorizer": "An embedding model made in Django admin (an embeddings API, structured vectors, a custom "
            "class). Empty: the bundled model chosen above.",
            "index_type": "Fixed when the collection is created. Qdrant offers HNSW only (AUTOINDEX is HNSW with "
            "Qdrant's defaults there).",
        }
        widgets = {"text_template": forms.Textarea(attrs={"rows": 5, "spellcheck": "false"})}

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in OPTIONAL_WITH_DEFAULTS:
            self.fields[name].required = False
        self.fields["source"].queryset = sources_for(user)
        self.fields["store"].queryset = stores_for(user)
        self.fields["vectorizer"].empty_label = f"None: the bundled model ({DEFAULT_MODEL} unless chosen above)"
        self.warnings: list[str] = []
        if self.instance.pk:
            self.fields["name"].disabled = True
            self.initial["payload_columns"] = list(self.instance.payload_columns)
        self._live_catalog_pickers()
        self.source = self._chosen_source()
        self.catalog, self.catalog_error = load_catalog(self.source) if self.source else ({}, "")
        self.table_name = self._value("table") or ""
        self.columns: list[dict] = self.catalog.get(self.table_name, [])
        if self.catalog_error:
            self._typed_pickers()
            return
        tables = sorted(self.catalog)
        self.fields["table"].choices = [("", "Pick a table" if tables or not self.source else "(no tables)")] + [
            (t, t) for t in tables
        ]
        self.fields["payload_columns"].choices = [
            (c["name"], f"{c['name']} ({c['type']}{', primary key' if c['primary_key'] else ''})")
            for c in self.columns
        ]

    def _typed_pickers(self) -> None:
        """The catalog cannot be read: the table and payload columns are typed instead (the save
        warns that they were not checked; starting the task checks them)."""
        self.fields["table"] = forms.CharField(
            max_length=64, help_text="The source cannot be read now: type the table's name.",
        )
        self.fields["payload_columns"] = _ColumnList(
            required=False, label="Payload columns",
            help_text="Column names separated by commas (the source cannot be read now to list them).",
        )

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

    # -- validation: the service's rules, shown on their fields ----------------------------------

    def clean(self) -> dict:
        data = super().clean()
        for name in OPTIONAL_WITH_DEFAULTS:
            if data.get(name) in (None, ""):
                data[name] = SyncTask._meta.get_field(name).get_default()
        data["payload_columns"] = list(data.get("payload_columns") or [])
        check = validate_task(self._unsaved(data))
        for name, messages in check.errors.items():
            if name in self.errors:
                continue  # the field's own error (required, not a number...) says enough
            for message in messages:
                self.add_error(name if name in self.fields else None, message)
        self.warnings = check.warnings
        return data

    def _unsaved(self, data: dict) -> SyncTask:
        """The task as it would be saved, for the checks (fields with errors keep their defaults)."""
        task = SyncTask(name=self.instance.name if self.instance.pk else data.get("name") or "")
        for key in ("source", "store", *TASK_FIELDS):
            if data.get(key) is not None:
                setattr(task, key, data[key])
        return task

    # -- saving and previewing -------------------------------------------------------------------

    def save(self, commit: bool = True) -> SyncTask | None:  # noqa: ARG002 - always through the service
        data = self.cleaned_data
        name = self.instance.name if self.instance.pk else data["name"]
        fields = {key: data[key] for key in TASK_FIELDS if key in data}
        try:
            task = save_task(name=name, source=data["source"], store=data["store"], **fields)
        except TaskInvalid as exc:  # something changed since clean() (the table, another save)
            for field, messages in exc.message_dict.items():
                for message in messages:
                    self.add_error(field if field in self.fields else None, message)
            return None
        self.warnings = task.save_warnings
        return task

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
            row_filter=data.get("row_filter") or [],
        )
