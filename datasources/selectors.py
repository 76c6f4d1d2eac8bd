"""Reads of data sources and vector stores, filtered by what the user may see."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.permissions import restrict

from .models import DataSource, VectorStore


def sources_for(user, action: str = "view") -> QuerySet[DataSource]:
    return restrict(DataSource.objects.all(), user, action)


def stores_for(user, action: str = "view") -> QuerySet[VectorStore]:
    return restrict(VectorStore.objects.all(), user, action)
