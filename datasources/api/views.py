"""API views of data sources and vector stores: CRUD plus "test connection" and the table catalog.

Querysets come from the selectors (so object permissions apply everywhere); changes go through
the services. Deleting an object a task uses is refused with 409.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from rsync_admin.api import APIViewMixin, Conflict, router
from tasks.lookups import table_catalog

from ..models import DataSource, VectorStore
from ..selectors import sources_for, stores_for
from ..services import InUse, check_source, check_store, delete_source, delete_store
from .serializers import (
    CheckResultSerializer,
    DataSourceSerializer,
    DetailSerializer,
    TableCatalogSerializer,
    VectorStoreSerializer,
)

IN_USE = OpenApiResponse(DetailSerializer, description="Tasks use it: delete or move them first.")
DOWN = OpenApiResponse(DetailSerializer, description="The server cannot be reached.")
REFUSED = OpenApiResponse(DetailSerializer, description="The server refused (e.g. wrong password).")
CHECKS = OpenApiResponse(
    CheckResultSerializer(many=True),
    description="Every check with its outcome; a failed connection is a failed check, not an error.",
)


@extend_schema_view(destroy=extend_schema(responses={204: None, 409: IN_USE}))
class DataSourceViewSet(APIViewMixin, viewsets.ModelViewSet):
    """Databases rows are read from: MySQL/MariaDB and PostgreSQL (change log or polling), SQLite (polling).
    The password is write-only."""

    serializer_class = DataSourceSerializer
    filterset_fields = {"name": ["exact", "icontains"], "kind": ["exact"], "host": ["exact"],
                        "database": ["exact"], "last_check_ok": ["exact"]}

    def get_queryset(self) -> QuerySet[DataSource]:
        return sources_for(self.request.user)

    def perform_destroy(self, instance: DataSource) -> None:
        try:
            delete_source(instance)
        except InUse as exc:
            raise Conflict(str(exc)) from None

    @extend_schema(request=None, responses={200: CHECKS})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Test the connection: connect, privileges and change-log settings, each with its message."""
        results = check_source(self.get_object())
        return Response([r.as_dict() for r in results])

    @extend_schema(responses={200: TableCatalogSerializer(many=True), 400: REFUSED, 503: DOWN})
    @action(detail=True, methods=["get"])
    def tables(self, request: Request, pk: str | None = None) -> Response:
        """The source's tables with their columns (live from the server)."""
        catalog = table_catalog(self.get_object())
        return Response([{"name": name, "columns": columns} for name, columns in catalog.items()])


@extend_schema_view(destroy=extend_schema(responses={204: None, 409: IN_USE}))
class VectorStoreViewSet(APIViewMixin, viewsets.ModelViewSet):
    """Vector stores vectors are written to: Milvus (a server or Milvus Lite) and Qdrant (a server or a local
    folder). The token is write-only."""

    serializer_class = VectorStoreSerializer
    filterset_fields = {"name": ["exact", "icontains"], "kind": ["exact"]}

    def get_queryset(self) -> QuerySet[VectorStore]:
        return stores_for(self.request.user)

    def perform_destroy(self, instance: VectorStore) -> None:
        try:
            delete_store(instance)
        except InUse as exc:
            raise Conflict(str(exc)) from None

    @extend_schema(request=None, responses={200: CHECKS})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Test the connection to the vector store."""
        return Response([r.as_dict() for r in check_store(self.get_object())])


router.register("sources", DataSourceViewSet, basename="source")
router.register("stores", VectorStoreViewSet, basename="store")
