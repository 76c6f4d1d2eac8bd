"""Console pages for data sources and vector stores: list, create, edit, delete, test connection.

Reads go through `datasources.selectors`, changes through `datasources.services`.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.permissions import can, get_or_deny, perm_name

from .connectors.base import CheckResult
from .forms import SourceForm, StoreForm
from .models import DataSource, VectorStore
from .selectors import sources_for, stores_for
from .services import InUse, check_source, check_store, delete_source, delete_store

# -- connection-test results ------------------------------------------------------------------


def source_last_check(source: DataSource) -> dict | None:
    """The outcome of the source's last connection test, as recorded by `check_source`."""
    if source.last_check_at is None:
        return None
    return {"ok": source.last_check_ok, "at": source.last_check_at, "checks": source.last_check_report}


def store_last_check(store: VectorStore) -> dict | None:
    """The outcome of the store's last connection test, as recorded by `check_store`."""
    if store.last_check_at is None:
        return None
    return {"ok": store.last_check_ok, "at": store.last_check_at, "checks": store.last_check_report}


def first_failure(outcome: dict | None) -> str:
    if not outcome:
        return ""
    return next((c["message"] for c in outcome["checks"] if not c["ok"]), "")


def rights(user, obj) -> dict[str, bool]:
    """What the user may do with one object, for showing only the buttons that work."""
    return {"change": can(user, "change", obj), "delete": can(user, "delete", obj)}


def sources_with_checks(user) -> list[dict]:
    out = []
    for source in sources_for(user):
        outcome = source_last_check(source)
        out.append({"object": source, "check": outcome, "failure": first_failure(outcome), "can": rights(user, source)})
    return out


def stores_with_checks(user) -> list[dict]:
    out = []
    for store in stores_for(user):
        outcome = store_last_check(store)
        out.append({"object": store, "check": outcome, "failure": first_failure(outcome), "can": rights(user, store)})
    return out


def require_add(user, model) -> None:
    if not user.has_perm(perm_name(model, "add")):
        raise PermissionDenied(f"You may not create {model._meta.verbose_name_plural}.")


# -- data sources -----------------------------------------------------------------------------


@login_required
def source_list(request: HttpRequest) -> HttpResponse:
    return render(request, "console/sources/list.html", {"rows": sources_with_checks(request.user)})


@login_required
@require_http_methods(["GET", "POST"])
def source_form(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    if pk:
        source = get_or_deny(sources_for(request.user), request.user, pk, "change")
    else:
        require_add(request.user, DataSource)
        source = DataSource()
    form = SourceForm(request.POST or None, instance=source)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        if saved is not None:
            messages.success(request, f"Data source {saved.name} saved.")
            return redirect("console:source-list")
    return render(request, "console/sources/form.html", {
        "form": form, "source": source if pk else None,
        "slots": replication_slots(request.user, source) if pk else [],
    })


def replication_slots(user, source: DataSource) -> list[tuple]:
    """PostgreSQL: each visible task's slot and the WAL it keeps on the server."""
    if source.kind != DataSource.Kind.POSTGRESQL:
        return []
    from tasks.selectors import replication_slot_status, tasks_for

    return [(task, replication_slot_status(task)) for task in tasks_for(user).filter(source=source)]


@login_required
@require_http_methods(["GET", "POST"])
def source_delete(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_or_deny(sources_for(request.user), request.user, pk, "delete")
    return _delete(request, source, delete_source, "data source", "console:source-list")


@login_required
@require_POST
def source_test(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_or_deny(sources_for(request.user), request.user, pk)
    try:
        results = check_source(source)
    except ValueError as exc:  # no connector for this kind of source
        results = [CheckResult("connect", False, str(exc))]
    return render(request, "console/_checks.html", {
        "checks": [r.as_dict() for r in results], "ok": all(r.ok for r in results), "at": timezone.now(),
        "target": source,
    })


# -- vector stores ----------------------------------------------------------------------------


@login_required
def store_list(request: HttpRequest) -> HttpResponse:
    return render(request, "console/stores/list.html", {"rows": stores_with_checks(request.user)})


@login_required
@require_http_methods(["GET", "POST"])
def store_form(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    if pk:
        store = get_or_deny(stores_for(request.user), request.user, pk, "change")
    else:
        require_add(request.user, VectorStore)
        store = VectorStore()
    form = StoreForm(request.POST or None, instance=store)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        if saved is not None:
            messages.success(request, f"Vector store {saved.name} saved.")
            return redirect("console:store-list")
    return render(request, "console/stores/form.html", {"form": form, "store": store if pk else None})


@login_required
@require_http_methods(["GET", "POST"])
def store_delete(request: HttpRequest, pk: int) -> HttpResponse:
    store = get_or_deny(stores_for(request.user), request.user, pk, "delete")
    return _delete(request, store, delete_store, "vector store", "console:store-list")


@login_required
@require_POST
def store_test(request: HttpRequest, pk: int) -> HttpResponse:
    store = get_or_deny(stores_for(request.user), request.user, pk)
    check_store(store)
    store.refresh_from_db()
    outcome = store_last_check(store)
    return render(request, "console/_checks.html", {**outcome, "target": store})


# -- shared -----------------------------------------------------------------------------------


def _delete(request: HttpRequest, obj: DataSource | VectorStore, delete, kind: str, list_url: str) -> HttpResponse:
    """Ask first (GET), delete on POST; objects used by tasks are refused with their names."""
    if request.method == "POST":
        try:
            delete(obj)
        except InUse as exc:
            messages.error(request, str(exc))
            return redirect(list_url)
        messages.success(request, f"The {kind} {obj.name} was deleted.")
        return redirect(list_url)
    return render(request, "console/confirm_delete.html", {
        "object": obj, "kind": kind, "tasks": list(obj.tasks.all()), "cancel_href": reverse(list_url),
        "explanation": f"This removes the {kind}'s connection settings and secret from Data Rsync. "
                       f"Nothing on the server itself is touched.",
    })
