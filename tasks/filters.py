"""Row filters: which rows of the table a task keeps in its collection.

A filter is a list of conditions that must all hold, stored as JSON
`[{"column": "status", "op": "=", "value": "published"}, ...]` (the API and config files use this
form; the console form writes one condition a line, `status = published`). Rows are tested in the
pipeline, the same way for the snapshot, the change stream, polling and replays, so a row that
stops matching after an update is deleted from the collection and one that starts matching is
added. SQL semantics for NULL: a comparison with NULL is false; use `is null` / `is not null`.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any

from datasources.connectors.base import TableInfo, normalize_value

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
MEMBERSHIP = ("in", "not in")
NULL_TESTS = ("is null", "is not null")
OPS = (*COMPARISONS, *MEMBERSHIP, *NULL_TESTS)
_NUMERIC = {"decimal", "numeric", "float", "double", "real", "double precision", "bit"}


class FilterError(ValueError):
    """The filter cannot be understood or does not fit the table; the message says why."""


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any = None

    def as_dict(self) -> dict:
        out = {"column": self.column, "op": self.op}
        if self.op not in NULL_TESTS:
            out["value"] = self.value
        return out

    def as_line(self) -> str:
        if self.op in NULL_TESTS:
            return f"{self.column} {self.op}"
        if self.op in MEMBERSHIP:
            return f"{self.column} {self.op} {', '.join(_literal(v) for v in self.value)}"
        return f"{self.column} {self.op} {_literal(self.value)}"


def _literal(value: Any) -> str:
    return value if isinstance(value, str) and value.strip() == value and value else json.dumps(value)


def parse_conditions(raw: Any) -> list[Condition]:
    """The conditions of a stored or submitted filter (a JSON list of objects); [] for none."""
    if raw in (None, "", []):
        return []
    if not isinstance(raw, list):
        raise FilterError("A row filter is a list of conditions like {\"column\": \"status\", \"op\": \"=\", "
                          "\"value\": \"published\"}.")
    conditions = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not isinstance(item.get("column"), str) or not item["column"]:
            raise FilterError(f"Condition {number} needs a column name.")
        op = str(item.get("op", "")).strip().lower()
        if op not in OPS:
            raise FilterError(f"Condition {number} ({item['column']}): unknown operator {item.get('op')!r}; "
                              f"use one of {', '.join(OPS)}.")
        value = item.get("value")
        if op in MEMBERSHIP and (not isinstance(value, list) or not value):
            raise FilterError(f"Condition {number} ({item['column']} {op}): the value is a non-empty list.")
        if op in COMPARISONS and (value is None or isinstance(value, (list, dict))):
            raise FilterError(f"Condition {number} ({item['column']} {op}): compare with one value "
                              "(for NULL use 'is null' or 'is not null').")
        conditions.append(Condition(item["column"], op, None if op in NULL_TESTS else value))
    return conditions


_LINE = re.compile(r"^\s*(?P<column>[^\s=!<>]+)\s*(?P<op>is\s+not\s+null|is\s+null|not\s+in|in|!=|<=|>=|=|<|>)"
                   r"\s*(?P<value>.*?)\s*$", re.IGNORECASE)


def parse_lines(text: str) -> list[dict]:
    """The console's form of a filter, one condition a line (`stars >= 10`, `kind in class, function`,
    `deleted_at is null`), as the stored JSON form. Values are numbers when they look like numbers,
    JSON strings when quoted, else text as written."""
    out = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        # `kind == class` or `stars => 3`: an operator we do not have, not a value starting with '='.
        if match is None or match["value"][:1] in ("=", "<", ">", "!"):
            raise FilterError(f"Line {number} ({line.strip()!r}) is not 'column operator value', "
                              f"e.g. 'stars >= 10'; operators: {', '.join(OPS)}.")
        op = " ".join(match["op"].lower().split())
        item: dict[str, Any] = {"column": match["column"], "op": op}
        raw_value = match["value"]
        if op in NULL_TESTS:
            if raw_value:
                raise FilterError(f"Line {number}: '{op}' takes no value.")
        elif op in MEMBERSHIP:
            item["value"] = [_value(v) for v in _split_list(raw_value)]
        else:
            if not raw_value:
                raise FilterError(f"Line {number}: '{match['column']} {op}' needs a value.")
            item["value"] = _value(raw_value)
        out.append(item)
    parse_conditions(out)
    return out


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    return [part.strip() for part in re.findall(r'\s*("(?:[^"\\]|\\.)*"|[^,]+)', text) if part.strip()]


def _value(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            raise FilterError(f"Cannot read the quoted value {text}.") from None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def format_lines(raw: Any) -> str:
    """A stored filter as the console shows it."""
    try:
        return "\n".join(c.as_line() for c in parse_conditions(raw))
    except FilterError:
        return ""


class RowFilter:
    """Conditions bound to a table: values turned into the column's type once, tested per row."""

    def __init__(self, conditions: list[Condition], table: TableInfo) -> None:
        self.tests = []
        for condition in conditions:
            column = table.column(condition.column)
            if column is None:
                names = ", ".join(sorted(c.name for c in table.columns))
                raise FilterError(f"The row filter names column {condition.column!r} that {table.name!r} does not "
                                  f"have (it has: {names}).")
            convert = _converter(column)
            value = condition.value
            try:
                if condition.op in MEMBERSHIP:
                    value = {convert(v) for v in value}
                elif condition.op in COMPARISONS:
                    value = convert(value)
            except (TypeError, ValueError):
                raise FilterError(f"The row filter compares {condition.column!r} ({column.data_type}) with "
                                  f"{condition.value!r}, which is not a {column.data_type} value.") from None
            self.tests.append((condition.column, condition.op, value, convert))

    @classmethod
    def for_task(cls, task, table: TableInfo) -> RowFilter | None:
        conditions = parse_conditions(task.row_filter)
        return cls(conditions, table) if conditions else None

    def matches(self, row: dict[str, Any]) -> bool:
        for column, op, value, convert in self.tests:
            raw = row.get(column)
            if op == "is null":
                ok = raw is None
            elif op == "is not null":
                ok = raw is not None
            elif raw is None:
                ok = False  # as in SQL: NULL compares with nothing
            else:
                actual = convert(raw)
                ok = _compare(actual, op, value)
            if not ok:
                return False
        return True


def _converter(column):
    if column.is_integer:
        return lambda v: int(normalize_value(v)) if not isinstance(v, bool) else int(v)
    if column.is_float or column.data_type.lower() in _NUMERIC:
        return lambda v: float(normalize_value(v))
    return lambda v: str(normalize_value(v))


_COMPARE = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda actual, values: actual in values, "not in": lambda actual, values: actual not in values,
}


def _compare(actual: Any, op: str, value: Any) -> bool:
    return _COMPARE[op](actual, value)
