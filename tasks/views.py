"""The browser console: dashboard, task pages, the task form with its live catalog and preview,
live progress and the search playground.

Views stay thin: reads through `tasks.selectors` / `tasks.lookups` (and the kept events of
`tasks.events`), changes through `tasks.services`; what is left here is shaping data for templates.
"""

from __future__ import annotations

import logging
import time

import redis
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from kombu.exceptions import OperationalError as BrokerError

from accounts.permissions import can, get_or_deny
from datasources.connectors.base import ConnectorError
from datasources.views import require_add, sources_with_checks, stores_with_checks

from . import selectors
from .events import latest_event, recent_events
from .forms import CATALOG_ERRORS, TaskForm
from .lookups import PREVIEW_ROWS, preview, search
from .models import SyncRun, SyncTask
from .pipeline import MappingError
from .progress import format_duration
from .services import (
    TaskNotReady,
    TaskRunning,
    delete_task,
    discard_dead_letters,
    replay_dead_letters,
    resnapshot_task,
    start_task,
    stop_task,
)

logger = logging.getLogger(__name__)

RUN_HISTORY = 20
DEAD_LETTERS_SHOWN = 20
RECENT_MESSAGES = 10
CHART_SECONDS = 300  # the task page's throughput and lag chart spans the last five minutes


# -- shaping data for templates ---------------------------------------------------------------


def run_duration(run: SyncRun) -> str:
    if run.started_at is None:
        return ""
    end = run.finished_at or timezone.now()
    return format_duration((end - run.started_at).total_seconds())


def run_counters(run: SyncRun | None) -> dict[str, int]:
    return {name: getattr(run, name) if run else 0 for name in SyncRun.COUNTERS}


def live_state(task: SyncTask, run: SyncRun | None, event: dict | None) -> dict:
    """What the progress panel shows before the websocket says anything."""
    state = {
        "status": run.status if run else "never run", "phase": run.phase if run else "",
        "done": run.rows_read if run else 0, "total": run.rows_total if run else None,
        "rate": None, "eta": None, "lag": None, "counters": run_counters(run),
        "seq": event["seq"] if event else 0, "run": run.pk if run else None,
    }
    if event and run and event.get("run") == run.pk:
        state.update({key: event.get(key) for key in ("phase", "done", "total", "rate", "eta", "lag")})
        if event.get("counters"):
            state["counters"] = {name: event["counters"].get(name, 0) for name in SyncRun.COUNTERS}
        if run.status not in SyncRun.ACTIVE:
            state["rate"], state["eta"] = 0, None
    state["percent"] = (
        min(100.0, round(100.0 * state["done"] / state["total"], 1)) if state["total"] else None
    )
    state["eta_text"] = format_duration(state["eta"]) if state["eta"] is not None else ""
    return state


def chart_history(task_id: int) -> list[dict]:
    """Rate and lag of the last minutes from the kept events, so the chart is not empty after a reload."""
    points = []
    for event in recent_events(task_id, seconds=CHART_SECONDS):
        if event.get("type", "progress") != "progress":
            continue
        running = event.get("status") in SyncRun.ACTIVE
        points.append({
            "at": event["at"], "rate": (event.get("rate") or 0) if running else 0,
            "lag": event.get("lag") if running else None,
        })
    return points


def rows_synced(counters: dict[str, int]) -> int:
    """Rows of the run whose point in the store now matches the source (written, deleted or already equal)."""
    return sum(counters.get(name, 0) or 0 for name in ("rows_upserted", "rows_deleted", "rows_unchanged"))


def recent_messages(run: SyncRun | None) -> list[dict]:
    if run is None:
        return []
    out = [{"level": "notice", "text": text} for text in (run.notices or [])[-RECENT_MESSAGES:]]
    if run.error:
        out.append({"level": "error", "text": run.error})
    return out


def task_summary(task: SyncTask, user) -> dict:
    """One dashboard line: desired state, latest run, rows synced, rate, lag, last error."""
    run = selectors.latest_run(task)
    event = latest_event(task.pk)
    live = live_state(task, run, event)
    errored = selectors.runs_for(user).filter(task=task).exclude(error="").first()
    return {
        "task": task,
        "run": run,
        "rows_synced": rows_synced(live["counters"]),
        "rate": live["rate"] if run and run.status in SyncRun.ACTIVE else None,
        "lag": live["lag"],
        "last_error": errored.error if errored else "",
        "last_error_run": errored,
    }


def run_rows(task: SyncTask, user) -> list[dict]:
    runs = selectors.runs_for(user).filter(task=task)[:RUN_HISTORY]
    return [{"run": run, "duration": run_duration(run)} for run in runs]


def _task(request: HttpRequest, pk: int, action: str = "view") -> SyncTask:
    """The task: 404 when the user may not see it, 403 when they may see but not `action` it."""
    return get_or_deny(selectors.tasks_for(request.user), request.user, pk, action)


def task_rights(user, task: SyncTask) -> dict[str, bool]:
    return {action: can(user, action, task) for action in ("change", "delete", "run")}


# -- dashboard and lists ----------------------------------------------------------------------


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    summaries = [task_summary(t, request.user) for t in selectors.tasks_for(request.user)]
    context = {"summaries": summaries}
    if request.htmx and request.GET.get("part") == "tasks":
        return render(request, "console/dashboard/_tasks.html", context)
    context.update({"sources": sources_with_checks(request.user), "stores": stores_with_checks(request.user)})
    return render(request, "console/dashboard/index.html", context)


@login_required
@require_GET
def task_list(request: HttpRequest) -> HttpResponse:
    summaries = [task_summary(t, request.user) for t in selectors.tasks_for(request.user)]
    return render(request, "console/tasks/list.html", {"summaries": summaries})


# -- the task form ----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def task_form(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    if pk:
        task = _task(request, pk, "change")
    else:
        require_add(request.user, SyncTask)
        task = None
    initial = {}
    if task is None and request.GET.get("source"):
        initial["source"] = request.GET["source"]
    form = TaskForm(request.POST or None, user=request.user, instance=task or SyncTask(), initial=initial)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        if saved is not None:
            messages.success(request, f"Task {saved.name} saved.")
            for warning in form.warnings:  # e.g. the source was down: nothing was checked against it
                messages.warning(request, warning)
            return redirect("console:task-detail", pk=saved.pk)
    return render(request, "console/tasks/form.html", {"form": form, "task": task})


@login_required
@require_GET
def task_catalog(request: HttpRequest) -> HttpResponse:
    """The table picker and column pickers for the chosen source (htmx)."""
    initial = {
        "source": request.GET.get("source") or None,
        "table": request.GET.get("table", ""),
        "payload_columns": request.GET.getlist("payload_columns"),
    }
    form = TaskForm(user=request.user, initial=initial)
    return render(request, "console/tasks/_catalog.html", {"form": form})


@login_required
@require_POST
def task_preview(request: HttpRequest) -> HttpResponse:
    """Text and payload of a few real rows for the form as it is, before saving (htmx)."""
    form = TaskForm(request.POST, user=request.user)
    form.is_valid()
    context: dict = {"form": form, "errors": form.preview_errors, "rows": [], "error": "", "limit": PREVIEW_ROWS}
    if not context["errors"] and all(form.cleaned_data.get(f) for f in ("source", "table", "text_template")):
        try:
            context["rows"] = preview(form.draft())
        except (*CATALOG_ERRORS, MappingError) as exc:
            context["error"] = str(exc)
    elif not context["errors"]:
        context["error"] = "Pick a source and a table and write a text template first."
    return render(request, "console/tasks/_preview.html", context)


# -- the task page ----------------------------------------------------------------------------


def dead_letter_context(task: SyncTask, user) -> dict:
    letters = selectors.dead_letters_of(task)
    return {"task": task, "dead_letters": letters[:DEAD_LETTERS_SHOWN], "dead_letter_count": letters.count(),
            "can": task_rights(user, task)}


def _task_context(request: HttpRequest, task: SyncTask) -> dict:
    run = selectors.latest_run(task)
    event = latest_event(task.pk)
    live = live_state(task, run, event)
    live["history"], live["server_time"] = chart_history(task.pk), time.time()
    return {
        **dead_letter_context(task, request.user),
        "task": task, "run": run, "summary": task_summary(task, request.user),
        "live": live, "recent": recent_messages(run),
        "runs": run_rows(task, request.user), "counters": SyncRun.COUNTERS,
        "ws_path": f"/ws/tasks/{task.pk}/", "events_url": f"/api/tasks/{task.pk}/events/",
        "can": task_rights(request.user, task),
    }


@login_required
@require_GET
def task_detail(request: HttpRequest, pk: int) -> HttpResponse:
    task = _task(request, pk)
    return render(request, "console/tasks/detail.html", _task_context(request, task))


@login_required
@require_GET
def task_header(request: HttpRequest, pk: int) -> HttpResponse:
    """The state line and buttons (htmx refresh when the run's status changes)."""
    task = _task(request, pk)
    return render(request, "console/tasks/_header.html", _task_context(request, task))


@login_required
@require_GET
def task_runs(request: HttpRequest, pk: int) -> HttpResponse:
    task = _task(request, pk)
    return render(request, "console/tasks/_runs.html", {"task": task, "runs": run_rows(task, request.user)})


@login_required
@require_POST
def task_start(request: HttpRequest, pk: int) -> HttpResponse:
    task = _task(request, pk, "run")
    try:
        run = start_task(task)
    except TaskNotReady as exc:
        messages.error(request, f"Cannot start {task.name}: {exc}")
    except (BrokerError, redis.RedisError, OSError) as exc:
        messages.warning(request, f"{task.name} is marked running, but the worker queue cannot be reached ({exc}).")
    else:
        messages.success(request, f"Started {task.name} (run {run.pk}).")
    return redirect("console:task-detail", pk=task.pk)


@login_required
@require_POST
def task_stop(request: HttpRequest, pk: int) -> HttpResponse:
    task = _task(request, pk, "run")
    stop_task(task)
    messages.success(request, f"Asked {task.name} to stop: the runner finishes its batch first.")
    return redirect("console:task-detail", pk=task.pk)


@login_required
@require_POST
def task_resnapshot(request: HttpRequest, pk: int) -> HttpResponse:
    task = _task(request, pk, "run")
    resnapshot_task(task)
    messages.success(request, f"{task.name} reads the whole table again on its next run.")
    return redirect("console:task-detail", pk=task.pk)


@login_required
@require_http_methods(["GET", "POST"])
def task_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask first (GET), delete on POST; a running task is refused (stop it first)."""
    task = _task(request, pk, "delete")
    if request.method == "POST":
        try:
            delete_task(task)
        except (TaskRunning, ConnectorError) as exc:
            # ConnectorError: a PostgreSQL task whose slot cannot be dropped (server down) stays.
            messages.error(request, str(exc))
            return redirect("console:task-detail", pk=task.pk)
        messages.success(request, f"Task {task.name} was deleted; its collection {task.collection} stays in the store.")
        return redirect("console:task-list")
    return render(request, "console/confirm_delete.html", {
        "object": task, "kind": "task", "tasks": [], "cancel_href": reverse("console:task-detail", args=[task.pk]),
        "explanation": f"This deletes the task with its run history and checkpoint. The collection {task.collection} "
                       f"stays in {task.store.name}.",
    })


@login_required
@require_GET
def task_dead_letters(request: HttpRequest, pk: int) -> HttpResponse:
    """The dead-letter list (htmx refresh)."""
    task = _task(request, pk)
    return render(request, "console/tasks/_dead_letters.html", dead_letter_context(task, request.user))


@login_required
@require_POST
def task_dead_letters_action(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    """Replay or discard one dead letter (`letter` in the form) or all of them."""
    task = _task(request, pk, "run")
    letter = request.POST.get("letter", "")
    ids = [int(letter)] if letter.isdigit() else None
    if verb == "replay":
        count = replay_dead_letters(task, letter_ids=ids)
        running = task.desired_state == SyncTask.DesiredState.RUNNING
        when = "within seconds" if running else "when the task next runs: start it"
        messages.success(request, f"{count} row(s) will be read again from the source and written {when}.")
    else:
        count = discard_dead_letters(task, letter_ids=ids)
        messages.success(request, f"Discarded {count} dead letter(s).")
    return redirect(reverse("console:task-detail", args=[task.pk]) + "#dead-letters")


@login_required
@require_GET
def task_search(request: HttpRequest, pk: int) -> HttpResponse:
    """The search playground: top hits for a query (htmx)."""
    task = _task(request, pk)
    query = request.GET.get("q", "").strip()
    context: dict = {"task": task, "query": query, "hits": [], "error": ""}
    if query:
        try:
            context["hits"] = search(task, query)
        except (ConnectorError, MappingError) as exc:
            context["error"] = str(exc)
    return render(request, "console/tasks/_search_results.html", context)
