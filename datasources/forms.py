"""Console forms for data sources and vector stores.

Secrets are write-only: the inputs never render a stored value, an empty input keeps what is
stored, and a "clear" box removes it. Saving goes through `datasources.services`.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from .models import DataSource, VectorStore
from .services import SOURCE_FIELDS, STORE_FIELDS, save_source, save_store


class _SecretFormMixin:
    """A write-only secret field named by `secret_field`, plus a `clear_<secret>` box."""

    secret_field = ""
    secret_label = ""

    def _setup_secret(self) -> None:
        field = self.fields[self.secret_field]
        if self.secret_is_set:
            field.help_text = f"A {self.secret_label} is set. Leave empty to keep it; type a new one to replace it."
            field.widget.attrs["placeholder"] = f"(a {self.secret_label} is set)"
            self.fields[f"clear_{self.secret_field}"].label = f"Remove the stored {self.secret_label}"
        else:
            field.help_text = f"No {self.secret_label} is set." if self.instance.pk else "Optional."
            del self.fields[f"clear_{self.secret_field}"]

    @property
    def secret_is_set(self) -> bool:
        return bool(self.instance.pk and getattr(self.instance, self.secret_field))

    def secret_value(self) -> str | None:
        """What to pass to the service: None keeps the stored secret, "" removes it."""
        if self.cleaned_data.get(f"clear_{self.secret_field}"):
            return ""
        value = self.cleaned_data.get(self.secret_field) or ""
        return value or (None if self.instance.pk else "")

    def _save_through(self, save, names: tuple[str, ...]):
        fields = {name: self.cleaned_data[name] for name in names if name in self.cleaned_data}
        name = self.instance.name if self.instance.pk else self.cleaned_data["name"]
        try:
            return save(name=name, **{self.secret_field: self.secret_value()}, **fields)
        except ValidationError as exc:
            self.add_error(None, exc)
            return None


class SourceForm(_SecretFormMixin, forms.ModelForm):
    secret_field = "password"
    secret_label = "password"

    password = forms.CharField(
        required=False, strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    clear_password = forms.BooleanField(required=False)

    class Meta:
        model = DataSource
        fields = ["name", "kind", "host", "port", "database", "user"]
        help_texts = {"name": "Letters, digits, - and _. Cannot be changed later."}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].disabled = True
        self._setup_secret()

    def save(self, commit: bool = True) -> DataSource | None:  # noqa: ARG002 - always through the service
        return self._save_through(save_source, SOURCE_FIELDS)


class StoreForm(_SecretFormMixin, forms.ModelForm):
    secret_field = "token"
    secret_label = "token"

    token = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        label="Token",
    )
    clear_token = forms.BooleanField(required=False)

    class Meta:
        model = VectorStore
        fields = ["name", "kind", "uri"]
        labels = {"uri": "URI"}
        help_texts = {"name": "Letters, digits, - and _. Cannot be changed later."}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].disabled = True
        self._setup_secret()

    def save(self, commit: bool = True) -> VectorStore | None:  # noqa: ARG002 - always through the service
        return self._save_through(save_store, STORE_FIELDS)
