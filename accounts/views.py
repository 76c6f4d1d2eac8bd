"""The users pages, "My account" and the access panel of sources, stores and tasks.

Reads through `accounts.selectors`, changes through `accounts.services` (each writes its audit
entry with the request's actor, address and request id). Rules:

* the users pages need auth.view_user (Admins, Super admins); changing a user needs
  auth.change_user and that the user's rights are a subset of the actor's own; creating one needs
  auth.add_user; roles and auditor rights are given only by someone who holds them;
* the access panel needs the right to change the object (404 without view right, 403 with view but
  not change, through `accounts.permissions.get_or_deny`);
* new passwords and tokens are shown once, in the response itself, never stored in the session.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import selectors, services
from .forms import GrantForm, PasswordResetForm, RolesForm, UserCreateForm
from .permissions import get_or_deny


def _require(user, perm: str, what: str) -> None:
    if not user.has_perm(perm):
        raise PermissionDenied(f"You may not {what}.")


def _shown_once(request: HttpRequest, context: dict) -> HttpResponse:
    """A page with a new secret (password or token): not cached, not kept anywhere."""
    response = render(request, "accounts/secret.html", context)
    response["Cache-Control"] = "no-store"
    return response


# -- users ------------------------------------------------------------------------------------


def _target(request: HttpRequest, pk: int, *, change: bool = True):
    """The user `pk`: 403 without auth.view_user, 404 when there is none, 403 when the actor may
    not change them (`change`)."""
    _require(request.user, "auth.view_user", "see users")
    target = selectors.user_by_pk(pk)
    if target is None:
        raise Http404(f"No user with id {pk}.")
    if change and not selectors.may_administer(request.user, target):
        raise PermissionDenied(f"You may not change {target.get_username()}: they hold rights you do not.")
    return target


@login_required
@require_GET
def user_list(request: HttpRequest) -> HttpResponse:
    _require(request.user, "auth.view_user", "see users")
    users = list(selectors.users_list())
    return render(request, "accounts/users/list.html", {
        "users": users, "can_add": request.user.has_perm("auth.add_user"),
    })


@login_required
@require_http_methods(["GET", "POST"])
def user_create(request: HttpRequest) -> HttpResponse:
    _require(request.user, "auth.add_user", "create users")
    groups = selectors.assignable_groups(request.user)
    form = UserCreateForm(request.POST or None, groups=groups)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = services.create_user(username=data["username"], password=data["password"], email=data["email"],
                                        roles=data["roles"])
        except IntegrityError:
            form.add_error("username", "A user with that name already exists.")
        else:
            messages.success(request, f"User {user.get_username()} created.")
            return redirect("accounts:user-detail", pk=user.pk)
    return render(request, "accounts/users/create.html", {"form": form})


def _detail_context(request: HttpRequest, target, **extra) -> dict:
    actor = request.user
    may_change = selectors.may_administer(actor, target)
    groups = selectors.assignable_groups(actor) if may_change else []
    return {
        "target": target, "roles": selectors.group_names(target), "token": selectors.token_of(target),
        "may_change": may_change, "is_self": target.pk == actor.pk,
        "roles_form": extra.pop("roles_form", None) or RolesForm(
            initial={"roles": selectors.group_names(target)}, groups=groups),
        "password_form": extra.pop("password_form", None) or PasswordResetForm(user=target),
        "auditor": selectors.auditor_state(target), "may_manage_auditors": selectors.may_manage_auditors(actor),
        **extra,
    }


@login_required
@require_GET
def user_detail(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk, change=False)
    return render(request, "accounts/users/detail.html", _detail_context(request, target))


@login_required
@require_POST
def user_roles(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    form = RolesForm(request.POST, groups=selectors.assignable_groups(request.user))
    if not form.is_valid():
        return render(request, "accounts/users/detail.html", _detail_context(request, target, roles_form=form),
                      status=400)
    services.set_roles(target, form.cleaned_data["roles"])
    messages.success(request, f"Roles of {target.get_username()} saved.")
    return redirect("accounts:user-detail", pk=target.pk)


@login_required
@require_POST
def user_active(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    active = request.POST.get("active") == "1"
    if not active and target.pk == request.user.pk:
        raise PermissionDenied("You may not disable yourself.")
    services.set_active(target, active)
    messages.success(request, f"{target.get_username()} is {'enabled' if active else 'disabled'}.")
    return redirect("accounts:user-detail", pk=target.pk)


@login_required
@require_POST
def user_password(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    form = PasswordResetForm(request.POST, user=target)
    if not form.is_valid():
        return render(request, "accounts/users/detail.html", _detail_context(request, target, password_form=form),
                      status=400)
    typed = form.cleaned_data["password"]
    password = typed or services.generate_password()
    services.reset_password(target, password)
    if typed:
        messages.success(request, f"Password of {target.get_username()} changed; their API token was revoked.")
        return redirect("accounts:user-detail", pk=target.pk)
    return _shown_once(request, {
        "title": f"New password for {target.get_username()}", "secret": password, "secret_id": "new-password",
        "note": "Give it to the user over a safe channel; it is not shown again. Their API token was revoked.",
        "back": reverse("accounts:user-detail", args=[target.pk]),
    })


@login_required
@require_POST
def user_token(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    key = services.issue_token(target)
    return _shown_once(request, {
        "title": f"New API token for {target.get_username()}", "secret": key, "secret_id": "new-token",
        "note": "Send it as the header Authorization: Token <key>. It replaces the old token and is not shown again.",
        "back": reverse("accounts:user-detail", args=[target.pk]),
    })


@login_required
@require_POST
def user_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    if services.revoke_token(target):
        messages.success(request, f"The API token of {target.get_username()} was revoked.")
    else:
        messages.info(request, f"{target.get_username()} had no API token.")
    return redirect("accounts:user-detail", pk=target.pk)


@login_required
@require_POST
def user_auditor(request: HttpRequest, pk: int) -> HttpResponse:
    target = _target(request, pk)
    if not selectors.may_manage_auditors(request.user):
        raise PermissionDenied("Only someone who may read and export the audit log may make others auditors.")
    auditor = request.POST.get("auditor") == "1"
    if services.set_auditor(target, auditor):
        messages.success(request, f"{target.get_username()} {'may now' if auditor else 'may no longer'} read and "
                                  "export the audit log.")
    return redirect("accounts:user-detail", pk=target.pk)


# -- my account -------------------------------------------------------------------------------


@login_required
@never_cache
@require_GET
def my_account(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/account.html", {
        "roles": selectors.group_names(request.user), "token": selectors.token_of(request.user),
    })


@login_required
@require_POST
def my_token(request: HttpRequest) -> HttpResponse:
    key = services.issue_token(request.user)
    return _shown_once(request, {
        "title": "Your new API token", "secret": key, "secret_id": "new-token",
        "note": "Send it as the header Authorization: Token <key>. It replaces your old token and is not shown again.",
        "back": reverse("accounts:my-account"),
    })


@login_required
@require_POST
def my_token_revoke(request: HttpRequest) -> HttpResponse:
    if services.revoke_token(request.user):
        messages.success(request, "Your API token was revoked.")
    else:
        messages.info(request, "You had no API token.")
    return redirect("accounts:my-account")


# -- the access panel -------------------------------------------------------------------------


def _access_object(request: HttpRequest, kind: str, pk: int):
    """The object whose grants are shown: 404 without view right, 403 without change right."""
    queryset = selectors.access_queryset(kind, request.user)
    if queryset is None:
        raise Http404(f"Nothing of kind {kind!r} has grants.")
    return get_or_deny(queryset, request.user, pk, "change")


def _access_response(request: HttpRequest, kind: str, obj, form: GrantForm | None = None, *,
                     notice: str = "", status: int = 200) -> HttpResponse:
    levels = selectors.grantable_levels(request.user, obj)
    context = {
        "kind": kind, "object": obj, "holders": selectors.object_access(obj), "levels": levels,
        "form": form or GrantForm(levels=levels), "notice": notice,
        "panel_url": reverse("accounts:access", args=[kind, obj.pk]), "back": _object_page(kind, obj),
        "usernames": selectors.usernames() if request.user.has_perm("auth.view_user") else [],
        "groupnames": selectors.groupnames() if request.user.has_perm("auth.view_group") else [],
    }
    template = "accounts/_access_panel.html" if request.htmx else "accounts/access.html"
    return render(request, template, context, status=status)


def _object_page(kind: str, obj) -> str:
    names = {"source": "console:source-edit", "store": "console:store-edit", "task": "console:task-detail"}
    return reverse(names[kind], args=[obj.pk])


def _after_change(request: HttpRequest, kind: str, obj, notice: str) -> HttpResponse:
    """htmx: the panel again with the notice in it; otherwise back to the access page."""
    if request.htmx:
        return _access_response(request, kind, obj, notice=notice)
    messages.success(request, notice)
    return redirect("accounts:access", kind=kind, pk=obj.pk)


@login_required
@require_GET
def access(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    obj = _access_object(request, kind, pk)
    return _access_response(request, kind, obj)


@login_required
@require_POST
def access_grant(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    obj = _access_object(request, kind, pk)
    form = GrantForm(request.POST, levels=selectors.grantable_levels(request.user, obj))
    if not form.is_valid():
        # htmx swaps only successful responses in: the panel with its errors comes back as 200.
        return _access_response(request, kind, obj, form, status=200 if request.htmx else 400)
    principal, level = form.cleaned_data["principal"], form.cleaned_data["level"]
    services.grant(obj, to=principal, level=level)
    return _after_change(request, kind, obj, f"{form.cleaned_data['kind'].capitalize()} {form.cleaned_data['name']} "
                                             f"now has {level} rights on {obj}.")


@login_required
@require_POST
def access_revoke(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    obj = _access_object(request, kind, pk)
    holder = selectors.holder_of(obj, request.POST.get("holder", ""), request.POST.get("pk", ""))
    if holder is None:
        raise Http404("That user or group holds no rights on this object.")
    services.revoke(obj, to=holder)
    return _after_change(request, kind, obj, f"Rights on {obj} taken from {request.POST.get('holder')} {holder}.")
