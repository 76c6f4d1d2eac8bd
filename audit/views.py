"""The audit log pages: the filtered, paginated list, its CSV export and the chain check.

Reading the log needs audit.view_auditevent, exporting it audit.export_auditevent (Super admins
hold both; anyone can be made an auditor on the users page). Reads go through `audit.selectors`.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from . import selectors
from . import services as audit

PAGE_SIZE = 50


def _require(user, perm: str, what: str) -> None:
    if not user.has_perm(perm):
        raise PermissionDenied(f"You may not {what}.")


def _list_context(request: HttpRequest) -> dict:
    filters = selectors.EventFilters.from_params(request.GET)
    page = Paginator(selectors.events(filters), PAGE_SIZE).get_page(request.GET.get("page"))
    query = filters.active()
    return {
        "filters": filters, "page": page,
        "rows": [{"event": event, "diff": selectors.diff_text(event)} for event in page.object_list],
        "actions": selectors.actions(), "object_types": selectors.object_types(),
        "query": query, "querystring": urlencode(query), "can_export": request.user.has_perm("audit.export_auditevent"),
    }


@login_required
@require_GET
def event_list(request: HttpRequest) -> HttpResponse:
    _require(request.user, "audit.view_auditevent", "read the audit log")
    return render(request, "audit/list.html", _list_context(request))


@login_required
@require_GET
def event_export(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """The filtered list as CSV, streamed as it is read. The export itself is recorded."""
    _require(request.user, "audit.export_auditevent", "export the audit log")
    filters = selectors.EventFilters.from_params(request.GET)
    if filters.errors:
        return HttpResponseBadRequest("Fix the time range before exporting: " + " ".join(filters.errors.values()),
                                      content_type="text/plain")
    audit.record(action="export", object_type="audit.auditevent", object_label="audit log",
                 diff={"filters": filters.active()})
    response = StreamingHttpResponse(selectors.csv_lines(selectors.events(filters)), content_type="text/csv")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def verify(request: HttpRequest) -> HttpResponse:
    """Walk the whole chain and say whether it is intact (htmx: the result box only)."""
    _require(request.user, "audit.view_auditevent", "check the audit log")
    problems = audit.verify_chain()
    context = {"verified": {"ok": not problems, "problems": problems, "at": timezone.now()}}
    if request.htmx:
        return render(request, "audit/_verify.html", context)
    return render(request, "audit/list.html", {**_list_context(request), **context})
