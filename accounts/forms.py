"""Sign-in forms and the forms of the users pages and access panels."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.validators import UnicodeUsernameValidator

from audit.context import client_ip

from . import throttle
from .selectors import find_principal
from .services import record_failed_sign_in


class ThrottledLoginMixin:
    """Refuses sign-in for a while after repeated failures for the same user name or address."""

    def clean(self):
        username = (self.data.get("username") or "").strip()
        ip = client_ip(self.request) if self.request is not None else None
        wait = throttle.locked_for(username, ip)
        if wait:
            # authenticate() is never called, so Django sends no user_login_failed: record it here.
            record_failed_sign_in(username=username, request=self.request, reason="throttled")
            minutes = max(round(wait / 60), 1)
            raise forms.ValidationError(
                f"Too many failed sign-ins. Try again in about {minutes} minute{'s' if minutes > 1 else ''}.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.record_failure(username, ip)
            raise
        throttle.record_success(username, ip)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


# -- the users pages --------------------------------------------------------------------------


def group_choices(groups) -> list[tuple[str, str]]:
    return [(group.name, group.name) for group in groups]


class RolesField(forms.MultipleChoiceField):
    widget = forms.CheckboxSelectMultiple


class UserCreateForm(forms.Form):
    """A new user; `groups` are the roles (and groups) the acting user may hand out."""

    username = forms.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), strip=False,
                               help_text="At least 8 characters, not a common password.")
    roles = RolesField(required=False, label="Roles and groups")

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["roles"].choices = group_choices(groups)

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError("A user with that name already exists.")
        return username

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password and cleaned.get("username"):
            probe = get_user_model()(username=cleaned["username"], email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password, probe)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


class RolesForm(forms.Form):
    roles = RolesField(required=False, label="Roles and groups")

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["roles"].choices = group_choices(groups)


class PasswordResetForm(forms.Form):
    """Type the new password, or leave it empty to have one made up and shown once."""

    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        label="New password",
        help_text="Leave empty to generate one; it is shown once. A reset also revokes the user's API token.",
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if password:
            password_validation.validate_password(password, self.user)
        return password


class GrantForm(forms.Form):
    """Give a user or group a level of rights on one object."""

    kind = forms.ChoiceField(choices=[("user", "User"), ("group", "Group")], initial="user", label="To a")
    name = forms.CharField(max_length=150, label="User or group name")
    level = forms.ChoiceField(choices=())

    prefix = "grant"  # the panel sits on pages with forms of their own (a "name" field too)

    def __init__(self, *args, levels=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["level"].choices = [(level, level) for level in levels]

    def clean(self):
        cleaned = super().clean()
        kind, name = cleaned.get("kind"), (cleaned.get("name") or "").strip()
        if kind and name:
            principal = find_principal(kind, name)
            if principal is None:
                self.add_error("name", f"No {kind} named {name!r}.")
            cleaned["principal"] = principal
        return cleaned
