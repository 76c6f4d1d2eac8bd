"""API views of sync tasks (CRUD and actions), their runs, dead letters and events.

Querysets come from the selectors; changes go through the services. Decisions:

- Deleting a running task is refused with 409: stop it, wait for its run to end, then delete.
  (Stopping is asynchronous: the runner finishes its batch and commits its checkpoint first.)
  The task's collection stays in the vector store.
- Start answers 202 with the run (queued, or the active one when the task already runs); a task
  whose checks fail gets 400 with every failure in `detail`.
"""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from datasources.api.serializers import DetailSerializer
from rsync_admin.api import APIViewMixin, BadRequest, Conflict, router

from ..events import events_after
from ..lookups import preview, search
from ..models import SyncRun, SyncTask
from ..pipeline import MappingError
from ..selectors import runs_for, tasks_for
from ..services import (
    TaskNotReady,
    TaskRunning,
    delete_task,
    discard_dead_letters,
    replay_dead_letters,
    resnapshot_task,
    start_task,
    stop_task,
)
from .serializers import (
    DeadLetterActionSerializer,
    DeadLetterSelectionSerializer,
    DeadLetterSerializer,
    EventsQuerySerializer,
    PreviewRowSerializer,
    SearchHitSerializer,
    SearchQuerySerializer,
    SyncRunSerializer,
    SyncTaskSerializer,
    TaskDraftSerializer,
    TaskEventSerializer,
)

BAD = OpenApiResponse(DetailSerializer, description="The request cannot be served as asked; `detail` says why.")
DOWN = OpenApiResponse(DetailSerializer, description="The source, store or Redis cannot be reached.")
PREVIEW = {200: PreviewRowSerializer(many=True), 400: BAD, 503: DOWN}


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(django_filters.NumberFilter):
    """An object id; anything but an integer is a 400."""

    field_class = forms.IntegerField


class TaskFilter(django_filters.FilterSet):
    name = django_filters.CharFilter()
    name__icontains = django_filters.CharFilter(field_name="name", lookup_expr="icontains")
    source = IdFilter(field_name="source_id")
    store = IdFilter(field_name="store_id")
    table = django_filters.CharFilter()
    mode = django_filters.ChoiceFilter(choices=SyncTask.Mode.choices)
    desired_state = django_filters.ChoiceFilter(choices=SyncTask.DesiredState.choices)

    class Meta:
        model = SyncTask
        fields: list[str] = []


class RunFilter(django_filters.FilterSet):
    task = IdFilter(field_name="task_id")
    status = django_filters.MultipleChoiceFilter(choices=SyncRun.Status.choices)

    class Meta:
        model = SyncRun
        fields: list[str] = []


def _preview(task: SyncTask) -> Response:
    try:
        rows = preview(task)
    except MappingError as exc:
        raise BadRequest(str(exc)) from None
    return Response([row.as_dict() for row in rows])


@extend_schema_view(
    destroy=extend_schema(
        description="Delete a stopped task with its runs, checkpoint and dead letters (its collection stays in "
                    "the store). A running task is refused with 409: stop it and wait for its run to end.",
        responses={204: None, 409: OpenApiResponse(DetailSerializer, description="The task is running.")},
    ),
)
class SyncTaskViewSet(APIViewMixin, viewsets.ModelViewSet):
    """What to sync: a table of a source, rendered to text, embedded and written to a collection."""

    serializer_class = SyncTaskSerializer
    filterset_class = TaskFilter

    def get_queryset(self) -> QuerySet[SyncTask]:
        return tasks_for(self.request.user)

    def perform_destroy(self, instance: SyncTask) -> None:
        try:
            delete_task(instance)
        except TaskRunning as exc:
            raise Conflict(str(exc)) from None

    @extend_schema(request=None, responses={202: SyncRunSerializer, 400: BAD})
    @action(detail=True, methods=["post"], filter_backends=[])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Check the task and queue a run (a task already running returns its run)."""
        try:
            run = start_task(self.get_object())
        except TaskNotReady as exc:
            raise BadRequest(str(exc)) from None
        return Response(SyncRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: SyncTaskSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Ask the runner to stop: it finishes its batch, commits its checkpoint and exits."""
        task = self.get_object()
        stop_task(task)
        task.refresh_from_db()
        return Response(self.get_serializer(task).data)

    @extend_schema(request=None, responses={200: DetailSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def resnapshot(self, request: Request, pk: str | None = None) -> Response:
        """Read the whole table again on the next run (unchanged rows are not embedded again)."""
        task = self.get_object()
        resnapshot_task(task)
        detail = f"The next run of {task.name} reads table {task.table} again; unchanged rows are not embedded again."
        if task.desired_state == SyncTask.DesiredState.RUNNING:
            detail += " The task is running: stop and start it to begin now."
        return Response({"detail": detail})

    @extend_schema(responses=PREVIEW)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """The text and payload that the first rows of the table would be stored with."""
        return _preview(self.get_object())

    @extend_schema(request=TaskDraftSerializer, responses=PREVIEW)
    @action(detail=False, methods=["post"], url_path="preview", url_name="preview-draft",
            filter_backends=[], pagination_class=None)
    def preview_unsaved(self, request: Request) -> Response:
        """Preview an unsaved task: the text and payload the first rows of the table would get."""
        draft = TaskDraftSerializer(data=request.data, context=self.get_serializer_context())
        draft.is_valid(raise_exception=True)
        # An unsaved task: it has every attribute the mapping may ask for (a TaskDraft only some).
        return _preview(SyncTask(collection="preview", **draft.validated_data))

    @extend_schema(
        parameters=[SearchQuerySerializer], responses={200: SearchHitSerializer(many=True), 400: BAD, 503: DOWN},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def search(self, request: Request, pk: str | None = None) -> Response:
        """Search the task's collection by meaning."""
        task = self.get_object()
        query = SearchQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:
            hits = search(task, query.validated_data["q"], limit=query.validated_data["limit"])
        except MappingError as exc:
            raise BadRequest(str(exc)) from None
        return Response(hits)

    @extend_schema(parameters=[EventsQuerySerializer], responses={200: TaskEventSerializer(many=True), 503: DOWN})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def events(self, request: Request, pk: str | None = None) -> Response:
        """Recent events with `seq` greater than `after`, oldest first (catch-up after a lost websocket)."""
        task = self.get_object()
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(events_after(task.pk, query.validated_data["after"]))

    @extend_schema(responses=DeadLetterSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="dead-letters", url_name="dead-letters", filter_backends=[])
    def dead_letters(self, request: Request, pk: str | None = None) -> Response:
        """Rows the task could not write, newest first."""
        letters = self.get_object().dead_letters.order_by("-created_at", "-id")
        page = self.paginate_queryset(letters)
        return self.get_paginated_response(DeadLetterSerializer(page, many=True).data)

    def _dead_letter_ids(self, request: Request) -> list[int] | None:
        selection = DeadLetterSelectionSerializer(data=request.data)
        selection.is_valid(raise_exception=True)
        return selection.validated_data.get("ids")

    @extend_schema(request=DeadLetterSelectionSerializer, responses={202: DeadLetterActionSerializer, 400: BAD})
    @action(detail=True, methods=["post"], url_path="dead-letters/replay", url_name="dead-letters-replay",
            filter_backends=[])
    def replay_dead_letters(self, request: Request, pk: str | None = None) -> Response:
        """Try rows again: the runner reads each one as it is now in the source and writes it (a running
        task within seconds, a stopped one when it next runs); the letter goes once the row is written."""
        task = self.get_object()
        count = replay_dead_letters(task, letter_ids=self._dead_letter_ids(request))
        when = "within seconds" if task.desired_state == SyncTask.DesiredState.RUNNING else "when the task next runs"
        return Response({"detail": f"{count} dead letter(s) will be replayed {when}.", "count": count},
                        status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=DeadLetterSelectionSerializer, responses={200: DeadLetterActionSerializer, 400: BAD})
    @action(detail=True, methods=["post"], url_path="dead-letters/discard", url_name="dead-letters-discard",
            filter_backends=[])
    def discard_dead_letters(self, request: Request, pk: str | None = None) -> Response:
        """Forget rows' failures without trying them again."""
        count = discard_dead_letters(self.get_object(), letter_ids=self._dead_letter_ids(request))
        return Response({"detail": f"{count} dead letter(s) discarded.", "count": count})


class SyncRunViewSet(APIViewMixin, viewsets.ReadOnlyModelViewSet):
    """Each doing of a task, newest first."""

    serializer_class = SyncRunSerializer
    filterset_class = RunFilter

    def get_queryset(self) -> QuerySet[SyncRun]:
        return runs_for(self.request.user).order_by("-created_at", "-id")


router.register("tasks", SyncTaskViewSet, basename="task")
router.register("runs", SyncRunViewSet, basename="run")
