"""The rules a sync task must follow, in one place, whichever way it is saved.

`services.save_task` applies them, so the REST API, the console form, config files and anything
else that saves through it get the same answer in the same words; the form runs them early to show
every problem next to its field, `services.start_task` runs them again before a run, and the
runner's `TaskMapping.build` applies the catalog rules to the table as it is when a run starts.
Each caller maps `TaskInvalid` (a Django ValidationError carrying {field: [messages]}) to its own
error shape: 400 with per-field messages, form errors, a config error naming the item.

A source that cannot be reached while a task is saved does not stop the save: the table and columns
are then not checked, and the save reports a warning saying so (`TaskCheck.warnings`). Starting
the task checks everything again and refuses until the source answers and everything fits. A source
that answers is believed: a missing table or column is an error, not a warning.

Rules that depend on the vector store (reserved names, which names are allowed, which index types)
come from the store's connector class (`MilvusTarget`, `QdrantTarget`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

import pymysql
from django.core.exceptions import ValidationError

from datasources.connectors import source_connector, target_class
from datasources.connectors.base import ConnectorError, TableInfo

from .filters import FilterError, RowFilter, parse_conditions
from .models import SyncTask

# What reading a catalog can raise besides a bug; ValueError: no connector for the source's kind.
CATALOG_ERRORS = (ConnectorError, pymysql.err.MySQLError, OSError, ValueError)

COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COLLECTION_RULE = "Use letters, digits and underscores, starting with a letter or underscore."


class TaskInvalid(ValidationError):
    """The task breaks the rules; `message_dict` is {field: [messages]} ("__all__" for the task)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__({name: list(messages) for name, messages in errors.items()})


@dataclass
class TaskCheck:
    """What checking a task found: errors per field, warnings that do not stop a save, and the
    table as the source describes it (None when the source could not be asked)."""

    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    table: TableInfo | None = None

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    @property
    def ok(self) -> bool:
        return not self.errors

    def messages(self) -> list[str]:
        return [message for messages in self.errors.values() for message in messages]


def default_collection(task_name: str) -> str:
    return task_name.replace("-", "_")


def template_problem(template: str) -> str | None:
    """Why a text template cannot be rendered, or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"Not a valid template: {exc}. Put column names in braces, e.g. {{title}}; write {{{{ for a brace."
    if any(field_name == "" or (field_name or "").isdigit() for _, field_name, _, _ in parts):
        return "Name a column in every pair of braces, e.g. {title}; write {{ and }} for literal braces."
    if not any(field_name for _, field_name, _, _ in parts):
        return "The template names no column: put column names in braces, e.g. {title}\\n\\n{body}."
    return None


def _plural(names: list[str], one: str, many: str) -> str:
    return f"{many if len(names) > 1 else one} {', '.join(repr(n) for n in names)}"


def payload_problems(payload: list[str], store_kind: str | None) -> list[str]:
    """Duplicates, and the names the store cannot take (only once the store is known)."""
    problems = []
    twice = sorted({name for name in payload if payload.count(name) > 1})
    if twice:
        problems.append(f"{_plural(twice, 'Payload column', 'Payload columns')} "
                        f"{'is' if len(twice) == 1 else 'are'} listed twice.")
    if store_kind is None:
        return problems
    store = target_class(store_kind)
    reserved = sorted(set(payload) & store.RESERVED_FIELDS)
    if reserved:
        problems.append(
            f"{', '.join(repr(c) for c in reserved)} clash{'es' if len(reserved) == 1 else ''} with a field "
            f"{store.LABEL} keeps for itself ({', '.join(sorted(store.RESERVED_FIELDS))})."
        )
    for name in dict.fromkeys(payload):
        if name not in store.RESERVED_FIELDS and (problem := store.payload_name_problem(name)):
            problems.append(problem)
    return problems


def _unstorable(task: SyncTask) -> set[str]:
    if not task.store_id:
        return set()
    store = target_class(task.store.kind)
    return {c for c in task.payload_columns if c in store.RESERVED_FIELDS or store.payload_name_problem(c)}


def index_problems(task: SyncTask, store_kind: str) -> dict[str, list[str]]:
    """The index type and metric must be ones the store offers."""
    store = target_class(store_kind)
    problems: dict[str, list[str]] = {}
    if task.index_type not in store.INDEX_TYPES:
        problems["index_type"] = [
            f"{store.LABEL} has no {task.index_type} index: choose {' or '.join(store.INDEX_TYPES)}."
        ]
    if task.metric not in store.METRICS:
        problems["metric"] = [f"{store.LABEL} has no {task.metric} metric: choose {' or '.join(store.METRICS)}."]
    return problems


def catalog_problems(task: SyncTask, table: TableInfo) -> dict[str, list[str]]:
    """Per field, the columns the task names that the table does not have."""
    names = {c.name for c in table.columns}
    have = f"(it has: {', '.join(sorted(names))})"
    problems: dict[str, list[str]] = {}
    # A template that is not valid is reported as such; the columns it seems to name are not.
    used = [] if template_problem(task.text_template or "") else task.template_columns
    missing = [c for c in used if c not in names]
    if missing:
        problems["text_template"] = [
            f"The text template names {_plural(missing, 'column', 'columns')} that {table.name!r} "
            f"does not have {have}."
        ]
    # A name the store cannot take is reported as such (`payload_problems`), not also as missing.
    unstorable = _unstorable(task)
    missing = [c for c in dict.fromkeys(task.payload_columns) if c not in names and c not in unstorable]
    if missing:
        problems["payload_columns"] = [
            f"{_plural(missing, 'Payload column', 'Payload columns')} {'do' if len(missing) > 1 else 'does'} "
            f"not exist in {table.name!r} {have}."
        ]
    vectorizer = task.vectorizer if task.vectorizer_id else None
    if vectorizer is not None and vectorizer.kind == "structured":
        wanted = [c if isinstance(c, str) else c.get("name", "") for c in vectorizer.columns]
        missing = [c for c in wanted if c not in names]
        if missing:
            problems["vectorizer"] = [
                f"The structured vectorizer {vectorizer.name!r} reads {_plural(missing, 'column', 'columns')} "
                f"that {table.name!r} does not have {have}."
            ]
    try:
        conditions = parse_conditions(task.row_filter)
    except FilterError:
        conditions = []  # a filter that does not parse is reported by the rules that need no server
    try:
        RowFilter(conditions, table)
    except FilterError as exc:
        problems["row_filter"] = [str(exc)]
    if task.capture == SyncTask.Capture.POLL:
        for name in ("updated_at_column", "soft_delete_column"):
            column = getattr(task, name)
            if column and column not in names:
                problems[name] = [f"{table.name!r} has no column {column!r} {have}."]
    return problems


def _rules(task: SyncTask, check: TaskCheck) -> None:
    """The rules that need no server."""
    problem = template_problem(task.text_template or "")
    if problem:
        check.add("text_template", problem)
    store_kind = task.store.kind if task.store_id else None
    for problem in payload_problems(list(task.payload_columns or []), store_kind):
        check.add("payload_columns", problem)
    if task.collection and not COLLECTION_NAME.match(task.collection):
        check.add("collection", COLLECTION_RULE)
    elif not task.collection and task.name and not COLLECTION_NAME.match(default_collection(task.name)):
        check.add("collection", f"The task name gives collection {default_collection(task.name)!r}, which is not "
                                f"valid: name one. {COLLECTION_RULE}")
    if task.capture == SyncTask.Capture.POLL and not task.updated_at_column:
        check.add("updated_at_column", "Polling needs the column that changes on every write (e.g. updated_at).")
    try:
        parse_conditions(task.row_filter)
    except FilterError as exc:
        check.add("row_filter", str(exc))
    if task.chunk_size and task.chunk_overlap >= task.chunk_size:
        check.add("chunk_overlap", f"The overlap must be smaller than the chunk size ({task.chunk_size} tokens).")
    if store_kind is not None:
        for name, messages in index_problems(task, store_kind).items():
            for message in messages:
                check.add(name, message)


def validate_task(task: SyncTask, *, read_catalog: bool = True) -> TaskCheck:
    """Check a (possibly unsaved) task; with `read_catalog`, against its source's live catalog.

    Field types, choices and ranges are the model's own (`full_clean`); these are the rules that
    span fields, depend on the store, or need the source.
    """
    check = TaskCheck()
    _rules(task, check)
    if not (read_catalog and task.source_id and task.table):
        return check
    try:
        table = source_connector(task.source).describe_table(task.table)
    except CATALOG_ERRORS as exc:
        check.warnings.append(
            f"Table {task.table!r} and its columns were not checked: {str(exc) or type(exc).__name__} "
            "The task is saved; it will not start until the source answers and the check passes."
        )
        return check
    if table is None:
        check.add("table", f"Table {task.table!r} does not exist in database {task.source.database!r} "
                           "(or the user cannot see it).")
        return check
    check.table = table
    for name, messages in catalog_problems(task, table).items():
        check.errors.setdefault(name, []).extend(messages)
    if not table.primary_key:
        check.warnings.append(
            f"Table {task.table!r} has no primary key: the task is saved, but it will not start until the "
            "table has one (rows could not be matched to vectors)."
        )
    return check


def mapping_problems(task: SyncTask, table: TableInfo) -> list[str]:
    """What stops a run from mapping rows of `table` (the catalog as it is when the run starts)."""
    problems = [message for messages in catalog_problems(task, table).values() for message in messages]
    store_kind = task.store.kind if task.store_id else None
    return problems + payload_problems(list(task.payload_columns), store_kind)
