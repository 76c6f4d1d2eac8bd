"""What to sync (`SyncTask`), each doing of it (`SyncRun`), where it got to (`Checkpoint`), and
the rows it could not process (`DeadLetter`)."""

from __future__ import annotations

import string

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from datasources.embedders import DEFAULT_MODEL, MODEL_CHOICES


class SyncTask(models.Model):
    class Mode(models.TextChoices):
        FULL = "full", "Full snapshot"
        INCREMENTAL = "incremental", "Incremental (change stream only)"
        FULL_INCREMENTAL = "full+incremental", "Full snapshot, then change stream"

    class Capture(models.TextChoices):
        LOG = "log", "Change log (MySQL binlog, PostgreSQL logical replication)"
        POLL = "poll", "Timestamp polling (any SQL database; hard deletes are not seen)"

    class DesiredState(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class IndexType(models.TextChoices):
        AUTOINDEX = "AUTOINDEX", "Automatic (the store chooses)"
        HNSW = "HNSW", "HNSW graph"
        IVF_FLAT = "IVF_FLAT", "IVF_FLAT (Milvus only)"

    class Metric(models.TextChoices):
        COSINE = "COSINE", "Cosine similarity"
        IP = "IP", "Inner product (Qdrant: Dot)"
        L2 = "L2", "Euclidean distance (Qdrant: Euclid)"

    name = models.SlugField(max_length=100, unique=True)
    source = models.ForeignKey("datasources.DataSource", on_delete=models.PROTECT, related_name="tasks")
    store = models.ForeignKey("datasources.VectorStore", on_delete=models.PROTECT, related_name="tasks")
    table = models.CharField(max_length=64)
    primary_key = models.JSONField(default=list, blank=True, help_text="Read from the source catalog.")
    text_template = models.TextField(help_text="Columns in braces, e.g. {title}\\n\\n{body}.")
    payload_columns = models.JSONField(default=list, blank=True)
    embedding_model = models.CharField(max_length=100, choices=MODEL_CHOICES, default=DEFAULT_MODEL)
    vectorizer = models.ForeignKey(
        "datasources.EmbeddingModel", null=True, blank=True, on_delete=models.PROTECT, related_name="tasks",
        help_text="Leave empty for the bundled model.",
    )
    collection = models.CharField(max_length=255)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.FULL_INCREMENTAL)
    batch_size = models.PositiveIntegerField(default=256, validators=[MinValueValidator(1), MaxValueValidator(100_000)])
    capture = models.CharField(max_length=10, choices=Capture.choices, default=Capture.LOG)
    updated_at_column = models.CharField(max_length=64, blank=True, default="",
                                         help_text="Polling: the column that changes on every write.")
    soft_delete_column = models.CharField(max_length=64, blank=True, default="",
                                          help_text="Polling: a column that is non-null/true for deleted rows.")
    poll_interval = models.FloatField(default=5.0, help_text="Polling: seconds between polls.")
    overlap_seconds = models.FloatField(default=5.0, help_text="Polling: re-read this window for late commits.")
    row_filter = models.JSONField(
        default=list, blank=True,
        help_text='Rows to keep, all conditions true: [{"column": "status", "op": "=", "value": "published"}]. '
                  "Empty keeps every row.",
    )
    chunk_size = models.PositiveIntegerField(default=0, help_text="Tokens per chunk; 0 embeds each row whole.")
    chunk_overlap = models.PositiveIntegerField(default=32, help_text="Tokens shared by neighbouring chunks.")
    # The vector index of the collection, fixed when the collection is created (a different
    # index later needs a new collection). Ranges: Milvus' documented ones, and Qdrant's minimum
    # ef_construct of 4.
    index_type = models.CharField(
        max_length=10, choices=IndexType.choices, default=IndexType.AUTOINDEX,
        help_text="Qdrant offers HNSW only (AUTOINDEX is HNSW with Qdrant's defaults there).",
    )
    metric = models.CharField(max_length=10, choices=Metric.choices, default=Metric.COSINE,
                              help_text="How search compares vectors.")
    hnsw_m = models.PositiveIntegerField(
        "HNSW M", default=16, validators=[MinValueValidator(2), MaxValueValidator(2048)],
        help_text="HNSW: links per node (2-2048); more is more accurate and uses more memory.",
    )
    hnsw_ef_construction = models.PositiveIntegerField(
        "HNSW ef_construction", default=100, validators=[MinValueValidator(4), MaxValueValidator(65_535)],
        help_text="HNSW: candidates considered while building (4-65535); more is slower to build, more accurate.",
    )
    ivf_nlist = models.PositiveIntegerField(
        "IVF nlist", default=128, validators=[MinValueValidator(1), MaxValueValidator(65_536)],
        help_text="IVF_FLAT: number of clusters (1-65536).",
    )
    desired_state = models.CharField(
        max_length=10, choices=DesiredState.choices, default=DesiredState.STOPPED, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("run_synctask", "Can start, stop and re-snapshot the task")]

    def __str__(self) -> str:
        return self.name

    @property
    def template_columns(self) -> list[str]:
        """The column names the text template refers to, in order of first use."""
        names: list[str] = []
        for _, field_name, _, _ in string.Formatter().parse(self.text_template):
            if field_name is not None:
                base = field_name.split(".")[0].split("[")[0]
                if base and base not in names:
                    names.append(base)
        return names

    @property
    def streams(self) -> bool:
        return self.mode in (self.Mode.INCREMENTAL, self.Mode.FULL_INCREMENTAL)

    @property
    def snapshots(self) -> bool:
        return self.mode in (self.Mode.FULL, self.Mode.FULL_INCREMENTAL)


class SyncRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    task = models.ForeignKey(SyncTask, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=20, blank=True, default="")
    rows_read = models.BigIntegerField(default=0)
    rows_embedded = models.BigIntegerField(default=0)
    rows_upserted = models.BigIntegerField(default=0)
    rows_deleted = models.BigIntegerField(default=0)
    rows_unchanged = models.BigIntegerField(default=0)
    rows_failed = models.BigIntegerField(default=0)
    rows_filtered = models.BigIntegerField(default=0, help_text="Rows the task's row filter left out.")
    rows_total = models.BigIntegerField(null=True, blank=True)
    lag_seconds = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    notices = models.JSONField(default=list, blank=True)

    COUNTERS = ("rows_read", "rows_embedded", "rows_upserted", "rows_deleted", "rows_unchanged", "rows_filtered",
                "rows_failed")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.task} run {self.pk} ({self.status})"


class Checkpoint(models.Model):
    """Where a task got to. Written only after the store acknowledged what it covers."""

    class SnapshotState(models.TextChoices):
        PENDING = "pending", "Not started"
        RUNNING = "running", "In progress"
        DONE = "done", "Done"

    task = models.OneToOneField(SyncTask, on_delete=models.CASCADE, related_name="checkpoint")
    snapshot_state = models.CharField(max_length=10, choices=SnapshotState.choices, default=SnapshotState.PENDING)
    snapshot_last_key = models.JSONField(null=True, blank=True)
    snapshot_rows = models.BigIntegerField(default=0)
    # The stream position noted before the snapshot read anything: streaming starts there.
    stream_position = models.JSONField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"checkpoint of {self.task}"


class DeadLetter(models.Model):
    """A row that could not be written, with why; it stays until replayed or dismissed."""

    task = models.ForeignKey(SyncTask, on_delete=models.CASCADE, related_name="dead_letters")
    run = models.ForeignKey(SyncRun, on_delete=models.SET_NULL, null=True, blank=True)
    key = models.JSONField()
    row = models.JSONField()
    error = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Set by "replay": the runner reads the row again from the source and sends it through the
    # pipeline; the letter goes once that is written (a row that fails again gets a new letter).
    replay_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"dead letter {self.key} of {self.task}"
