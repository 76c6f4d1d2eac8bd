"""Serializers of data sources and vector stores.

Secrets are write-only: a response says only whether one is set (`password_set`, `token_set`).
Omitting the secret on update keeps the stored one; sending "" clears it. Names identify objects
(config files refer to them), so they are set on create and cannot be changed.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import DataSource, VectorStore
from ..services import SOURCE_FIELDS, STORE_FIELDS, save_source, save_store


class _NamedSerializer(serializers.ModelSerializer):
    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("The name cannot be changed (config files refer to objects by name).")
        return value


class DataSourceSerializer(_NamedSerializer):
    """A database rows are read from (MySQL/MariaDB, PostgreSQL, SQLite for polling); the password is
    write-only."""

    password = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False, max_length=1000,
        style={"input_type": "password"}, help_text="Write-only. Omit on update to keep the stored password.",
    )
    password_set = serializers.SerializerMethodField(help_text="Whether a password is stored.")

    class Meta:
        model = DataSource
        fields = [
            "id", "name", *SOURCE_FIELDS, "password", "password_set",
            "last_check_ok", "last_check_at", "last_check_report", "created_at", "updated_at",
        ]
        read_only_fields = ["last_check_ok", "last_check_at", "last_check_report"]
        extra_kwargs = {"port": {"min_value": 1, "max_value": 65535}}

    @extend_schema_field(serializers.BooleanField())
    def get_password_set(self, obj: DataSource) -> bool:
        return bool(obj.password)

    def create(self, validated_data: dict[str, Any]) -> DataSource:
        return self._save(validated_data, default_password="")

    def update(self, instance: DataSource, validated_data: dict[str, Any]) -> DataSource:
        validated_data["name"] = instance.name
        return self._save(validated_data, default_password=None)

    @staticmethod
    def _save(data: dict[str, Any], *, default_password: str | None) -> DataSource:
        fields = {key: data[key] for key in SOURCE_FIELDS if key in data}
        return save_source(name=data["name"], password=data.get("password", default_password), **fields)


class VectorStoreSerializer(_NamedSerializer):
    """A vector store (Milvus or Qdrant) vectors are written to; the token is write-only."""

    token = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False, max_length=4000,
        style={"input_type": "password"}, help_text="Write-only. Omit on update to keep the stored token.",
    )
    token_set = serializers.SerializerMethodField(help_text="Whether a token is stored.")

    class Meta:
        model = VectorStore
        fields = ["id", "name", *STORE_FIELDS, "token", "token_set", "last_check_ok", "last_check_at",
                  "last_check_report", "created_at", "updated_at"]
        read_only_fields = ["last_check_ok", "last_check_at", "last_check_report"]

    @extend_schema_field(serializers.BooleanField())
    def get_token_set(self, obj: VectorStore) -> bool:
        return bool(obj.token)

    def create(self, validated_data: dict[str, Any]) -> VectorStore:
        return self._save(validated_data, default_token="")

    def update(self, instance: VectorStore, validated_data: dict[str, Any]) -> VectorStore:
        validated_data["name"] = instance.name
        return self._save(validated_data, default_token=None)

    @staticmethod
    def _save(data: dict[str, Any], *, default_token: str | None) -> VectorStore:
        fields = {key: data[key] for key in STORE_FIELDS if key in data}
        return save_store(name=data["name"], token=data.get("token", default_token), **fields)


class CheckResultSerializer(serializers.Serializer):
    """One check of a source or store: its name, whether it passed, and what to do if not."""

    name = serializers.CharField()
    ok = serializers.BooleanField()
    message = serializers.CharField()


class CatalogColumnSerializer(serializers.Serializer):
    """A column of a source table."""

    name = serializers.CharField()
    type = serializers.CharField()
    primary_key = serializers.BooleanField()


class TableCatalogSerializer(serializers.Serializer):
    """A table of the source with its columns."""

    name = serializers.CharField()
    columns = CatalogColumnSerializer(many=True)


class DetailSerializer(serializers.Serializer):
    """An error (or a note) in words: `{"detail": "..."}`."""

    detail = serializers.CharField()
