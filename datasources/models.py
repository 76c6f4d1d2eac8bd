"""Where rows come from (`DataSource`) and where vectors go (`VectorStore`)."""

from __future__ import annotations

from django.db import models

from .fields import EncryptedTextField, Secret, reveal


class DataSource(models.Model):
    class Kind(models.TextChoices):
        MYSQL = "mysql", "MySQL / MariaDB"
        POSTGRESQL = "postgresql", "PostgreSQL"
        SQLITE = "sqlite", "SQLite (polling only)"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MYSQL)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=3306)
    database = models.CharField(max_length=500, help_text="Database name; for SQLite, the file path.")
    user = models.CharField(max_length=80)
    password = EncryptedTextField(blank=True, default="")
    last_check_ok = models.BooleanField(null=True, editable=False)
    last_check_at = models.DateTimeField(null=True, editable=False)
    last_check_report = models.JSONField(default=list, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_password(self) -> Secret:
        return reveal(self.password)


class VectorStore(models.Model):
    class Kind(models.TextChoices):
        MILVUS = "milvus", "Milvus"
        QDRANT = "qdrant", "Qdrant"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MILVUS)
    uri = models.CharField(
        max_length=500,
        help_text="Milvus: a server such as http://127.0.0.1:19530. Qdrant: a URL, or a folder path for "
        "local mode (one process only).",
    )
    token = EncryptedTextField(blank=True, default="")
    last_check_ok = models.BooleanField(null=True, editable=False)
    last_check_at = models.DateTimeField(null=True, editable=False)
    last_check_report = models.JSONField(default=list, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_token(self) -> Secret:
        return reveal(self.token)


class EmbeddingModel(models.Model):
    """A vectorizer a task can choose instead of the bundled model."""

    class Kind(models.TextChoices):
        SENTENCE_TRANSFORMERS = "sentence-transformers", "Bundled sentence-transformers model"
        OPENAI = "openai", "OpenAI-compatible embeddings API"
        STRUCTURED = "structured", "Numeric columns (scaled and normalised)"
        CUSTOM = "custom", "Custom vectorizer (dotted path)"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    model_name = models.CharField(max_length=200, blank=True, default="",
                                  help_text="The model the API or the bundled package serves.")
    base_url = models.URLField(blank=True, default="", help_text="e.g. https://api.openai.com/v1")
    api_key = EncryptedTextField(blank=True, default="")
    dimension = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="Checked against what the model returns.")
    columns = models.JSONField(default=list, blank=True, help_text="Structured: the numeric columns.")
    dotted_path = models.CharField(max_length=300, blank=True, default="",
                                   help_text="Custom: module.path:factory returning a vectorizer.")
    batch_size = models.PositiveIntegerField(default=64)
    max_concurrency = models.PositiveIntegerField(default=4)
    timeout_seconds = models.FloatField(default=30.0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_api_key(self) -> Secret:
        return reveal(self.api_key)
