"""Reads of the audit log for its pages: filtering, the filter choices, and CSV rows.

Diffs are shown as the services recorded them; secrets were already reduced to "changed" there.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from .models import AuditEvent

FILTER_FIELDS = ("actor", "action", "object_type", "object_id", "object_label", "since", "until")
CSV_COLUMNS = (
    "id", "time", "actor", "action", "object_type", "object_id", "object_label", "diff", "ip_address",
    "user_agent", "request_id", "hash",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class EventFilters:
    """The filters of the audit log page, parsed from its query string."""

    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    object_label: str = ""
    since: str = ""  # as typed: a date or a date and time (the browser's datetime-local)
    until: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> EventFilters:
        filters = cls(**{name: (params.get(name) or "").strip()[:255] for name in FILTER_FIELDS})
        for name in ("since", "until"):
            if getattr(filters, name) and filters.moment(name) is None:
                filters.errors[name] = "Use a date (2024-05-31) or a date and time (2024-05-31T14:30)."
        return filters

    def moment(self, name: str) -> dt.datetime | None:
        """`since` / `until` as an aware datetime; `until` is an exclusive bound that includes the
        typed moment, or the whole day when only a date is given."""
        text = getattr(self, name)
        if not text:
            return None
        try:
            value = parse_datetime(text)
            if value is None:
                day = parse_date(text)
                if day is None:
                    return None
                value = dt.datetime.combine(day, dt.time.min)
                if name == "until":
                    value += dt.timedelta(days=1)
            elif name == "until":
                value += dt.timedelta(microseconds=1)
        except ValueError:
            return None
        if timezone.is_naive(value):
            value = timezone.make_aware(value)
        return value

    def active(self) -> dict[str, str]:
        """The filters in use, for links (pages, export) and for the export's audit entry."""
        return {name: value for name, value in asdict(self).items() if name in FILTER_FIELDS and value}


def events(filters: EventFilters) -> QuerySet[AuditEvent]:
    """The events matching `filters`, newest first."""
    qs = AuditEvent.objects.all()
    if filters.actor:
        qs = qs.filter(actor_name__iexact=filters.actor)
    if filters.action:
        qs = qs.filter(action=filters.action)
    if filters.object_type:
        qs = qs.filter(object_type=filters.object_type)
    if filters.object_id:
        qs = qs.filter(object_id=filters.object_id)
    if filters.object_label:
        qs = qs.filter(object_label__icontains=filters.object_label)
    since, until = filters.moment("since"), filters.moment("until")
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    return qs.order_by("-id")


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct())


def object_types() -> list[str]:
    return [t for t in AuditEvent.objects.order_by("object_type").values_list("object_type", flat=True).distinct() if t]


def diff_text(event: AuditEvent) -> str:
    return json.dumps(event.diff, sort_keys=True, ensure_ascii=False, default=str) if event.diff else ""


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(event: AuditEvent) -> list[str]:
    return [_cell(v) for v in (
        event.pk, event.created_at.isoformat(), event.actor_name, event.action, event.object_type, event.object_id,
        event.object_label, diff_text(event), event.ip_address, event.user_agent, event.request_id, event.hash,
    )]


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(queryset: QuerySet[AuditEvent]) -> Iterator[str]:
    """The header and one line per event, produced as they are read (for a streaming response)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for event in queryset.iterator(chunk_size=2000):
        yield writer.writerow(csv_row(event))
