"""Config as code: sources, stores and tasks declared in YAML, applied and exported.

`apply_config()` parses, validates and applies a file inside one transaction: a file applies
whole or not at all, and every problem is reported at once, each with the path of the bad item
(`tasks[0].mode`) and its line. Objects are matched by name; objects the file does not mention
are left alone (there is no pruning: a missing entry must never delete a task and its vectors).

Secrets (a source's password, a store's token) appear only as `${ENV_VAR}` references, resolved
from the environment at apply time, so a config file can be committed. `export_config()` never
writes a secret: it writes a reference under a conventional name (`RSYNC_SOURCE_<NAME>_PASSWORD`,
`RSYNC_STORE_<NAME>_TOKEN`) because the database does not remember which variable a secret came
from. Writing the same reference each time keeps apply -> export -> apply stable.

The writes go through `save_source`, `save_store` and `save_task`; this module only checks the
file's shape and decides what changed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_slug
from django.db import models, transaction

from audit import services as audit
from datasources.crypto import SecretDecryptionError
from datasources.embedders import MODEL_CHOICES
from datasources.fields import Secret, reveal
from datasources.models import DataSource, EmbeddingModel, VectorStore
from datasources.services import save_source, save_store

from .filters import FilterError, parse_conditions, parse_lines
from .models import SyncTask
from .services import TASK_FIELDS, save_task

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECTIONS = ("sources", "stores", "tasks")
MAX_VALUES = 100_000


class ConfigError(Exception):
    """The file cannot be applied; `errors` lists every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Change:
    """What applying did (or, in a dry run, would do) to one object."""

    kind: str  # "source", "store" or "task"
    name: str
    action: str  # "created", "updated" or "unchanged"
    fields: tuple[str, ...] = ()  # the fields an update changed (names only: never values)
    note: str = ""  # something to look at that does not stop the apply

    def __str__(self) -> str:
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        note = f"; note: {self.note}" if self.note else ""
        return f"{self.kind} {self.name}: {self.action}{detail}{note}"


# -- schema --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    type: str  # "str", "int", "number", "str_list", "filter" or "secret"
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None


def _default(model: type[models.Model], field: str) -> Any:
    """The model's own default, so the file's defaults cannot drift from the form's."""
    value = model._meta.get_field(field).get_default()
    # Choices defaults are enum members; plain values compare and dump the same everywhere.
    return str(value) if isinstance(value, str) else value


def _check_slug(value: str) -> str | None:
    try:
        validate_slug(value)
    except ValidationError:
        return f"must be a slug (letters, digits, - and _), not {value!r}"
    return None


def _check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a port between 1 and 65535, not {value}"


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


_NAME = _Spec("str", required=True, check=_check_slug)
_REQUIRED_STR = _Spec("str", required=True, check=_not_empty)

SOURCE_SPEC: dict[str, _Spec] = {
    "name": _NAME,
    "kind": _Spec("str", default=_default(DataSource, "kind"), choices=tuple(DataSource.Kind.values)),
    "host": _REQUIRED_STR,
    "port": _Spec("int", default=_default(DataSource, "port"), check=_check_port),
    "database": _REQUIRED_STR,
    "user": _REQUIRED_STR,
    "password": _Spec("secret"),
}
STORE_SPEC: dict[str, _Spec] = {
    "name": _NAME,
    "kind": _Spec("str", default=_default(VectorStore, "kind"), choices=tuple(VectorStore.Kind.values)),
    "uri": _REQUIRED_STR,
    "token": _Spec("secret"),
}
TASK_SPEC: dict[str, _Spec] = {
    "name": _NAME,
    "source": _Spec("str", required=True),
    "store": _Spec("str", required=True),
    "table": _REQUIRED_STR,
    # What a value must be beyond its type (a template that parses, a batch size in range, an
    # index the store offers...) is tasks.validation's and the model's, checked when the task is
    # saved, as for the form and the API: one rule, one message.
    "text_template": _REQUIRED_STR,
    "payload_columns": _Spec("str_list", default=_default(SyncTask, "payload_columns")),
    "embedding_model": _Spec(
        "str", default=_default(SyncTask, "embedding_model"), choices=tuple(c[0] for c in MODEL_CHOICES)
    ),
    # Empty lets save_task derive the collection from the task name, as the form does.
    "collection": _Spec("str", default=""),
    "mode": _Spec("str", default=_default(SyncTask, "mode"), choices=tuple(SyncTask.Mode.values)),
    "batch_size": _Spec("int", default=_default(SyncTask, "batch_size")),
    "capture": _Spec("str", default=_default(SyncTask, "capture"), choices=tuple(SyncTask.Capture.values)),
    "updated_at_column": _Spec("str", default=""),
    "soft_delete_column": _Spec("str", default=""),
    "poll_interval": _Spec("number", default=_default(SyncTask, "poll_interval")),
    "overlap_seconds": _Spec("number", default=_default(SyncTask, "overlap_seconds")),
    "chunk_size": _Spec("int", default=_default(SyncTask, "chunk_size")),
    "chunk_overlap": _Spec("int", default=_default(SyncTask, "chunk_overlap")),
    # The name of an embedding model made in Django admin; empty: the bundled model.
    "vectorizer": _Spec("str", default=""),
    "index_type": _Spec("str", default=_default(SyncTask, "index_type"), choices=tuple(SyncTask.IndexType.values)),
    "metric": _Spec("str", default=_default(SyncTask, "metric"), choices=tuple(SyncTask.Metric.values)),
    "hnsw_m": _Spec("int", default=_default(SyncTask, "hnsw_m")),
    "hnsw_ef_construction": _Spec("int", default=_default(SyncTask, "hnsw_ef_construction")),
    "ivf_nlist": _Spec("int", default=_default(SyncTask, "ivf_nlist")),
    # Conditions as mappings ({column, op, value}) or as the console writes them ("stars >= 10").
    "row_filter": _Spec("filter", default=[]),
}
SPECS = {"sources": SOURCE_SPEC, "stores": STORE_SPEC, "tasks": TASK_SPEC}


def _a(value: Any) -> str:
    """The kind of a YAML value, for messages ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# -- YAML with line numbers ----------------------------------------------------------------------


class _Reader:
    """Turns the YAML node tree into plain values, remembering the line of every path.

    PyYAML's own loader forgets positions and silently keeps the last of two equal keys; both
    matter here, so mappings and sequences are walked by hand (scalars still use the safe
    constructor, so `3306` is an int and `yes` a boolean, as everywhere else).
    """

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.errors: list[str] = []
        self._constructor = yaml.SafeLoader("")
        self._active: set[int] = set()
        self._budget = MAX_VALUES

    def read(self, text: str) -> Any:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            return None if root is None else self._value(root, "")
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = exc.problem or exc.context or "cannot be parsed"
            raise ConfigError([f"malformed YAML{where}: {problem}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"malformed YAML: {exc}"]) from None

    def _value(self, node: yaml.Node, path: str) -> Any:
        # Aliases are expanded per use (each use has its own path), so nested aliases could grow a
        # small file into billions of values; no real config comes anywhere near the budget.
        self._budget -= 1
        if self._budget < 0:
            raise ConfigError([f"the file expands to more than {MAX_VALUES} values (aliases nested too deep?)"])
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._constructor.construct_object(node, deep=True)
        if id(node) in self._active:  # an alias inside its own anchor
            raise ConfigError([f"malformed YAML at line {node.start_mark.line + 1}: a recursive alias"])
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self._value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            self._constructor.flatten_mapping(node)  # `<<: *anchor` merge keys
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                key_path = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str):
                    self.errors.append(f"{path or 'the file'} has a key that is {_a(key)}, not a name "
                                       f"(line {key_node.start_mark.line + 1})")
                    continue
                if key in result:
                    self.errors.append(f"{key_path} is given twice (line {key_node.start_mark.line + 1})")
                    continue
                self.lines[key_path] = key_node.start_mark.line + 1
                result[key] = self._value(value_node, key_path)
            return result
        finally:
            self._active.discard(id(node))


# -- validation ----------------------------------------------------------------------------------


@dataclass
class _Item:
    path: str  # "sources[0]"
    values: dict[str, Any]  # validated; a secret is a Secret, or None to keep the stored one


@dataclass
class _Plan:
    sources: list[_Item]
    stores: list[_Item]
    tasks: list[_Item]


class _Errors:
    """Problems found so far, each as "<path> <what is wrong> (line N)"."""

    def __init__(self, lines: dict[str, int], found: list[str]) -> None:
        self.lines = lines
        self.found = found

    def add(self, path: str, message: str) -> None:
        self.found.append(f"{path} {message}{self._where(path)}")

    def _where(self, path: str) -> str:
        # A missing key has no line of its own: point at the nearest enclosing item instead.
        probe = path
        while probe:
            if probe in self.lines:
                return f" (line {self.lines[probe]})"
            probe = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
        return ""


class _Validator:
    def __init__(self, errors: _Errors, environ: Mapping[str, str]) -> None:
        self.errors = errors
        self.environ = environ

    def error(self, path: str, message: str) -> None:
        self.errors.add(path, message)

    def plan(self, data: Any) -> _Plan:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.errors.found.append(f"the file must be a mapping with {', '.join(SECTIONS)}, not {_a(data)}")
            return _Plan([], [], [])
        self._unknown_keys(data, "", SECTIONS)
        sections: dict[str, list[_Item]] = {}
        for section in SECTIONS:
            raw = data.get(section)
            if raw is None:  # `tasks:` with every entry commented out
                raw = []
            if not isinstance(raw, list):
                self.error(section, f"must be a list, not {_a(raw)}")
                raw = []
            sections[section] = self._section(section, raw)
        self._references(data)
        return _Plan(**sections)

    def _section(self, section: str, raw: list) -> list[_Item]:
        items: list[_Item] = []
        first_at: dict[str, str] = {}
        for index, entry in enumerate(raw):
            path = f"{section}[{index}]"
            if not isinstance(entry, dict):
                self.error(path, f"must be a mapping, not {_a(entry)}")
                continue
            values = self._item(entry, path, SPECS[section])
            name = entry.get("name")
            if isinstance(name, str):
                if name in first_at:
                    self.error(f"{path}.name", f"{name!r} is declared twice (first at {first_at[name]})")
                    continue
                first_at[name] = path
            if values is not None:
                items.append(_Item(path, values))
        return items

    def _unknown_keys(self, entry: dict, path: str, known: Any) -> None:
        for key in entry:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
                self.error(f"{path}.{key}" if path else key, f"is not a known key ({hint})")

    def _item(self, entry: dict, path: str, spec: dict[str, _Spec]) -> dict[str, Any] | None:
        before = len(self.errors.found)
        self._unknown_keys(entry, path, spec)
        values: dict[str, Any] = {}
        for key, field in spec.items():
            key_path = f"{path}.{key}"
            if key not in entry:
                if field.required:
                    self.error(key_path, "is required")
                elif field.type != "secret":
                    values[key] = field.default
                else:
                    values[key] = None  # keep the stored secret
                continue
            values[key] = self._value(entry[key], key_path, field)
        return values if len(self.errors.found) == before else None

    def _filter(self, value: Any, path: str) -> list[dict] | None:
        if not isinstance(value, list):
            self.error(path, f"must be a list of conditions, not {_a(value)}")
            return None
        conditions: list[dict] = []
        for i, item in enumerate(value):
            try:
                if isinstance(item, str):
                    conditions.extend(parse_lines(item))
                elif isinstance(item, dict):
                    parse_conditions([item])
                    conditions.append(item)
                else:
                    self.error(f"{path}[{i}]", f"must be a condition like 'stars >= 10', not {_a(item)}")
            except FilterError as exc:
                self.error(f"{path}[{i}]", str(exc).replace("Condition 1", "the condition").replace("Line 1", "it"))
        return conditions

    def _value(self, value: Any, path: str, field: _Spec) -> Any:
        if field.type == "secret":
            return self._secret(value, path)
        if field.type == "filter":
            return self._filter(value, path)
        if field.type == "number":
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                self.error(path, f"must be a number of seconds (0 or more), not {_a(value)}")
                return None
            return float(value)
        if field.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                quoted = " (leave out the quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
                self.error(path, f"must be an integer, not {_a(value)}{quoted}")
                return None
        elif field.type == "str_list":
            if not isinstance(value, list):
                self.error(path, f"must be a list of strings, not {_a(value)}")
                return None
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.error(f"{path}[{i}]", f"must be a string, not {_a(item)}")
            return value
        elif not isinstance(value, str):
            # YAML 1.1 reads yes/no/on/off as booleans and 0123 as a number: the fix is quoting.
            quote = " (put it in quotes)" if isinstance(value, bool | int | float) else ""
            self.error(path, f"must be a string, not {_a(value)}{quote}")
            return None
        if field.choices and value not in field.choices:
            self.error(path, f"must be one of {', '.join(field.choices)}, not {value!r}")
            return None
        if field.check and (problem := field.check(value)):
            self.error(path, problem)
            return None
        return value

    def _secret(self, value: Any, path: str) -> Secret | None:
        # Never put the value itself in a message: it may be the very secret that must not leak.
        if value is None:
            self.error(path, 'is empty: write a ${ENV_VAR} reference, "" for none, '
                             "or leave the key out to keep the stored one")
            return None
        if value == "":
            return Secret("")  # explicitly no secret; there is nothing to hide
        match = ENV_REF.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.error(path, "must be a ${ENV_VAR} reference, not a literal")
            return None
        variable = match.group(1)
        if variable not in self.environ:
            self.error(path, f"refers to ${{{variable}}}, which is not set in the environment")
            return None
        return Secret(self.environ[variable])

    def _references(self, data: dict) -> None:
        """Every task's source and store must exist, in the file or the database.

        Checked on the raw entries, so a task with another problem still gets this one reported.
        """
        def entries(section: str) -> list[dict]:
            raw = data.get(section)
            return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []

        declared = {section: {e.get("name") for e in entries(section)} for section in ("sources", "stores")}
        models_by_section = {"sources": DataSource, "stores": VectorStore}
        for index, entry in enumerate(data.get("tasks") if isinstance(data.get("tasks"), list) else []):
            if not isinstance(entry, dict):
                continue
            for key, section in (("source", "sources"), ("store", "stores")):
                name = entry.get(key)
                if not isinstance(name, str) or name in declared[section]:
                    continue  # a missing or mistyped reference is already reported by its item
                if not models_by_section[section].objects.filter(name=name).exists():
                    self.error(f"tasks[{index}].{key}", f"names {name!r}, which is neither under {section} "
                                                        f"in this file nor in the database")


def _read(text: str, environ: Mapping[str, str] | None) -> tuple[_Plan, _Errors]:
    """Parse and check the whole file; raises ConfigError listing every problem."""
    reader = _Reader()
    data = reader.read(text)
    errors = _Errors(reader.lines, list(reader.errors))
    plan = _Validator(errors, os.environ if environ is None else environ).plan(data)
    if errors.found:
        raise ConfigError(errors.found)
    return plan, errors


# -- applying ------------------------------------------------------------------------------------

# Stands for a stored secret the configured keys cannot decrypt: unequal to any value the file
# gives (so that value is saved), equal to itself (so leaving the key out is "unchanged").
_CHANGED = object()


def _plain(stored: str) -> Any:
    try:
        return reveal(stored)
    except SecretDecryptionError:
        return _CHANGED


def _source_state(source: DataSource) -> dict[str, Any]:
    return {"kind": source.kind, "host": source.host, "port": source.port, "database": source.database,
            "user": source.user, "password": _plain(source.password)}


def _store_state(store: VectorStore) -> dict[str, Any]:
    return {"kind": store.kind, "uri": store.uri, "token": _plain(store.token)}


def _task_state(task: SyncTask) -> dict[str, Any]:
    state = {key: getattr(task, key) for key in ("table", "primary_key", *TASK_FIELDS)}
    return {"source": task.source_id, "store": task.store_id, **state}


class _Applier:
    def __init__(self, errors: _Errors) -> None:
        self.errors = errors
        self.changes: list[Change] = []

    def upsert(self, kind: str, item: _Item, model: type[models.Model], state: Callable[[Any], dict[str, Any]],
               save: Callable[[], Any], note: Callable[[Any, str], str] = lambda obj, action: "") -> Any:
        """Save one object; roll its write back when it changed nothing (so `updated_at` and the
        secret's ciphertext stay as they were), and report what happened."""
        name = item.values["name"]
        existing = model.objects.filter(name=name).first()
        before = state(existing) if existing is not None else None
        try:
            with transaction.atomic():
                saved = save()
                after = state(saved)
                if before == after:
                    transaction.set_rollback(True)
        except ValidationError as exc:
            self._validation_error(item, exc)
            return None
        except (ValueError, SecretDecryptionError) as exc:
            self.errors.add(item.path, f"cannot be saved: {exc}")
            return None
        if before is None:
            self.changes.append(Change(kind, name, "created", note=note(saved, "created")))
            return saved
        if before == after:
            # The note looks at what saving found (e.g. a source it could not reach), so `saved`.
            self.changes.append(Change(kind, name, "unchanged", note=note(saved, "unchanged")))
            return existing
        changed = tuple(key for key in after if before[key] != after[key])
        self.changes.append(Change(kind, name, "updated", changed, note=note(saved, "updated")))
        return saved

    def _validation_error(self, item: _Item, exc: ValidationError) -> None:
        by_field = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
        for field, messages in by_field.items():
            path = f"{item.path}.{field}" if field in item.values else item.path
            prefix = "" if field in item.values or field == NON_FIELD_ERRORS else f"{field}: "
            for message in messages:
                self.errors.add(path, f"is invalid: {prefix}{message}")


def apply_config(text: str, *, dry_run: bool = False, environ: Mapping[str, str] | None = None) -> list[Change]:
    """Create or update every source, store and task the file declares, all or nothing.

    Raises ConfigError (and changes nothing) when anything is wrong. A dry run does every step,
    including the model checks and the table lookups, then rolls back.
    """
    plan, errors = _read(text, environ)
    applier = _Applier(errors)
    with transaction.atomic():
        sources: dict[str, DataSource | None] = {}
        for item in plan.sources:
            fields = {k: v for k, v in item.values.items() if k != "name"}
            sources[item.values["name"]] = applier.upsert(
                "source", item, DataSource, _source_state,
                lambda item=item, fields=fields: save_source(name=item.values["name"], **fields),
            )
        stores: dict[str, VectorStore | None] = {}
        for item in plan.stores:
            fields = {k: v for k, v in item.values.items() if k != "name"}
            stores[item.values["name"]] = applier.upsert(
                "store", item, VectorStore, _store_state,
                lambda item=item, fields=fields: save_store(name=item.values["name"], **fields),
            )
        for item in plan.tasks:
            source = _resolve(item.values["source"], sources, DataSource)
            store = _resolve(item.values["store"], stores, VectorStore)
            if source is None or store is None:
                continue  # its source or store failed above and is already reported
            fields = {k: v for k, v in item.values.items() if k not in ("name", "source", "store")}
            vectorizer_name = fields.pop("vectorizer", "") or ""
            fields["vectorizer"] = EmbeddingModel.objects.filter(name=vectorizer_name).first()
            if vectorizer_name and fields["vectorizer"] is None:
                errors.add(f"{item.path}.vectorizer", f"names vectorizer {vectorizer_name!r}, which does not exist "
                           "(create it in Django admin under Embedding models)")
                continue
            applier.upsert(
                "task", item, SyncTask, _task_state,
                lambda item=item, source=source, store=store, fields=fields: save_task(
                    name=item.values["name"], source=source, store=store, **fields
                ),
                note=_task_note,
            )
        if errors.found:
            raise ConfigError(errors.found)  # inside the atomic block: everything rolls back
        if dry_run:
            transaction.set_rollback(True)
        else:
            audit.record(action="config_apply", object_type="config", object_label="apply_config", diff={
                "changes": [f"{c.kind} {c.name}: {c.action}" for c in applier.changes if c.action != "unchanged"],
            })
    return applier.changes


def _task_note(task: SyncTask, action: str) -> str:
    notes = []
    # save_task saves a task whose source it cannot reach, or whose table has no primary key
    # (the start checks refuse to run it); say so here, or the first sign would be a task that
    # will not start.
    warnings = getattr(task, "save_warnings", [])
    if warnings:
        notes.append(" ".join(warnings) + f" Check with `manage.py check_source --task {task.name}`.")
    # A runner reads its task once, when it starts.
    if action == "updated" and task.desired_state == SyncTask.DesiredState.RUNNING:
        notes.append("the task is running: the change takes effect when it is stopped and started again")
    return "; ".join(notes)


def _resolve(name: str, applied: Mapping[str, Any], model: type[models.Model]) -> Any:
    if name in applied:
        return applied[name]
    return model.objects.filter(name=name).first()


# -- export --------------------------------------------------------------------------------------


def _exported(task: SyncTask, key: str) -> Any:
    value = getattr(task, key)
    if key == "vectorizer":
        return value.name if value is not None else ""
    return list(value) if isinstance(value, list) else value


def env_name(kind: str, name: str, secret: str) -> str:
    """The conventional variable for an exported secret: `RSYNC_SOURCE_SHOP_DB_PASSWORD`."""
    return f"RSYNC_{kind.upper()}_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_{secret.upper()}"


class _Dumper(yaml.SafeDumper):
    """Indented lists, flow-style lists of scalars, and templates with `\\n` kept on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.SequenceNode:
    flow = all(isinstance(item, str | int | float | bool) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def _secret_refs(objects: list, kind: str, secret: str) -> Iterator[tuple[Any, str]]:
    """Yield (object, variable) for each object with a stored secret.

    Two names can map to one variable (`shop-db`, `shop_db`); a suffix keeps them apart, since
    one variable feeding two secrets would silently give both the same value.
    """
    used: set[str] = set()
    for obj in objects:
        if not getattr(obj, secret):
            continue
        variable, n = env_name(kind, obj.name, secret), 1
        while variable in used:
            n += 1
            variable = env_name(kind, f"{obj.name}_{n}", secret)
        used.add(variable)
        yield obj, variable


def export_config() -> str:
    """Every source, store and task as a config file that apply_config accepts; secrets only as
    `${ENV_VAR}` references. The output depends only on the stored objects (no timestamp)."""
    sources = list(DataSource.objects.order_by("name"))
    stores = list(VectorStore.objects.order_by("name"))
    tasks = list(SyncTask.objects.select_related("source", "store").order_by("name"))
    passwords = dict(_secret_refs(sources, "source", "password"))
    tokens = dict(_secret_refs(stores, "store", "token"))

    source_entries = []
    for source in sources:
        entry: dict[str, Any] = {"name": source.name, "kind": source.kind, "host": source.host,
                                 "port": source.port, "database": source.database, "user": source.user}
        if source in passwords:  # an empty password is left out: applying that keeps it empty
            entry["password"] = f"${{{passwords[source]}}}"
        source_entries.append(entry)
    store_entries = []
    for store in stores:
        entry = {"name": store.name, "kind": store.kind, "uri": store.uri}
        if store in tokens:
            entry["token"] = f"${{{tokens[store]}}}"
        store_entries.append(entry)
    task_entries = [
        {"name": t.name, "source": t.source.name, "store": t.store.name,
         **{key: _exported(t, key) for key in TASK_FIELDS}}
        for t in tasks
    ]

    variables = [*passwords.values(), *tokens.values()]
    header = [
        "# Data Rsync configuration: apply with `python manage.py apply_config FILE`.",
        "# Secrets are never exported; each is a ${ENV_VAR} reference under a conventional name.",
    ]
    if variables:
        header.append("# Set these before applying (an unset one stops the apply with nothing changed):")
        header.extend(f"#   {variable}" for variable in variables)
    body = [
        yaml.dump({section: entries}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10**9)
        for section, entries in zip(SECTIONS, (source_entries, store_entries, task_entries), strict=True)
    ]
    return "\n".join(header) + "\n" + "\n".join(body)
