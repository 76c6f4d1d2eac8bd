"""Row filters: a task keeps only the rows its conditions match, in the snapshot and the stream;
a row that stops matching leaves the collection, one that starts matching joins it. Bad filters
are refused with a message naming the problem, in the API, the console and config files."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from datasources.connectors.milvus import split_chunk_key
from rsync_admin.corpus import insert_rows, rows
from tasks.configfile import apply_config, export_config
from tasks.filters import FilterError, RowFilter, parse_conditions, parse_lines
from tasks.models import Checkpoint, SyncRun, SyncTask
from tasks.services import save_task

from .helpers import PAIRS, form_data, source_rows, target_rows, wait_converged, wait_until

KEPT = "stars >= 10"


# -- the language ---------------------------------------------------------------------------------


def test_console_lines_become_the_stored_conditions():
    assert parse_lines("status = published\n  stars >= 10 \n\nkind in class, \"a, b\"\ndeleted_at is null") == [
        {"column": "status", "op": "=", "value": "published"},
        {"column": "stars", "op": ">=", "value": 10},
        {"column": "kind", "op": "in", "value": ["class", "a, b"]},
        {"column": "deleted_at", "op": "is null"},
    ]
    with pytest.raises(FilterError, match=r"Line 2 \('stars about 10'\) is not 'column operator value'"):
        parse_lines("kind = class\nstars about 10")
    with pytest.raises(FilterError, match="'stars >=' needs a value"):
        parse_lines("stars >=")
    with pytest.raises(FilterError, match="unknown operator 'like'"):
        parse_conditions([{"column": "title", "op": "like", "value": "%x%"}])
    with pytest.raises(FilterError, match="the value is a non-empty list"):
        parse_conditions([{"column": "kind", "op": "in", "value": "class"}])


def test_conditions_compare_by_the_column_type_and_null_matches_nothing():
    from datasources.connectors.base import Column, TableInfo

    table = TableInfo("docs", [Column("id", "bigint"), Column("stars", "int"), Column("kind", "varchar"),
                               Column("price", "decimal"), Column("seen", "datetime")], ["id"])
    keep = RowFilter(parse_conditions(parse_lines(
        "stars >= 10\nkind in class, function\nprice < 9.5\nseen > 2026-01-01")), table)
    import datetime as dt
    import decimal

    good = {"stars": 12, "kind": "class", "price": decimal.Decimal("9.25"), "seen": dt.datetime(2026, 3, 1)}
    assert keep.matches(good)
    assert not keep.matches({**good, "stars": 9})
    assert not keep.matches({**good, "stars": None})  # as in SQL
    assert not keep.matches({**good, "kind": "module"})
    assert not keep.matches({**good, "price": decimal.Decimal("10")})
    assert not keep.matches({**good, "seen": dt.datetime(2025, 12, 31, 23, 59)})
    with pytest.raises(FilterError, match=r"compares 'stars' \(int\) with 'many'"):
        RowFilter(parse_conditions([{"column": "stars", "op": ">", "value": "many"}]), table)
    with pytest.raises(FilterError, match="names column 'nope' that 'docs' does not have"):
        RowFilter(parse_conditions([{"column": "nope", "op": "is null"}]), table)


# -- refused where a task is saved ------------------------------------------------------------------


@pytest.fixture
def api():
    client = APIClient()
    client.force_login(get_user_model().objects.create_superuser("root", password="root-pw-1234"))
    return client


@pytest.mark.django_db(transaction=True)
def test_api_console_and_config_take_and_refuse_filters(make_task, api, client):
    task = make_task(5)
    url = f"/api/tasks/{task.pk}/"
    response = api.patch(url, {"row_filter": [{"column": "nope", "op": "=", "value": 1}]}, format="json")
    assert response.status_code == 400
    assert response.json() == {"row_filter": [
        "The row filter names column 'nope' that 'docs' does not have (it has: body, id, kind, module, name, stars, "
        "title, updated_at)."]}
    response = api.patch(url, {"row_filter": [{"column": "stars", "op": "~", "value": 1}]}, format="json")
    assert response.status_code == 400 and "unknown operator '~'" in response.json()["row_filter"][0]
    response = api.patch(url, {"row_filter": [{"column": "stars", "op": ">=", "value": 10}]}, format="json")
    assert response.status_code == 200 and response.json()["row_filter"] == [
        {"column": "stars", "op": ">=", "value": 10}]
    # The five rows have 0 to 4 stars: the preview shows each of them as left out.
    preview = api.get(f"{url}preview/").json()
    assert [item["notice"] for item in preview] == ["Left out by the row filter: not stored."] * 5

    client.force_login(get_user_model().objects.get(username="root"))
    edit = client.get(f"/tasks/{task.pk}/edit/")
    assert "stars &gt;= 10" in edit.content.decode()  # shown as the console writes it
    data = form_data(edit.context["form"], row_filter="stars >= 10\nkind == class")
    response = client.post(f"/tasks/{task.pk}/edit/", data)
    assert response.status_code == 200
    assert "Line 2 ('kind == class') is not 'column operator value'" in response.content.decode().replace(
        "&#x27;", "'")
    response = client.post(f"/tasks/{task.pk}/edit/", {**data, "row_filter": "stars >= 20\nkind = class"})
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.row_filter == [{"column": "stars", "op": ">=", "value": 20}, {"column": "kind", "op": "=",
                                                                                "value": "class"}]

    exported = export_config()
    assert "row_filter:" in exported and "column: stars" in exported
    config = (f"tasks:\n- name: {task.name}\n  source: {task.source.name}\n  store: {task.store.name}\n"
              f"  table: docs\n  text_template: '{{title}}'\n  row_filter: ['stars < 3', {{column: kind, op: '!=', "
              f"value: module}}]\n")
    apply_config(config)
    task.refresh_from_db()
    assert task.row_filter == [{"column": "stars", "op": "<", "value": 3},
                               {"column": "kind", "op": "!=", "value": "module"}]
    from tasks.configfile import ConfigError

    with pytest.raises(ConfigError, match=r"tasks\[0\]\.row_filter\[0\]"):
        apply_config(config.replace("'stars < 3'", "'stars about 3'"))


# -- in the pipeline ------------------------------------------------------------------------------------


@PAIRS
@pytest.mark.django_db(transaction=True)
def test_rows_join_and_leave_the_collection_as_they_match(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(60, batch_size=16, template="{title}")
    task = save_task(name=task.name, source=task.source, store=task.store,
                     row_filter=parse_lines(KEPT))
    run_in_thread(task)
    wait_until(lambda: Checkpoint.objects.get(task=task).snapshot_state == "done", timeout=300, message="snapshot")
    wait_converged(task, conn, where=_where(task))
    kept = source_rows(conn, where=_where(task))
    assert 0 < len(kept) < 60

    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET stars = 1 WHERE id = 15")  # was kept (stars 14): leaves
        cur.execute("UPDATE docs SET stars = 40 WHERE id = 3")  # was left out (stars 2): joins
        cur.execute("UPDATE docs SET stars = NULL WHERE id = 20")  # NULL matches nothing: leaves
    insert_rows(conn, "docs", [{**r, "stars": s} for r, s in zip(rows(2, start_id=900), (5, 25), strict=True)])
    wait_converged(task, conn, where=_where(task), timeout=120)
    points = target_rows(task)
    assert 3 in points and 15 not in points and 20 not in points and 901 in points and 900 not in points
    run = SyncRun.objects.filter(task=task).first()
    wait_until(lambda: SyncRun.objects.get(pk=run.pk).rows_filtered >= 60 - len(kept), message="filtered counter")


def _where(task: SyncTask) -> str:
    deleted = f" AND {task.soft_delete_column} IS NULL" if task.capture == "poll" else ""
    return KEPT + deleted


@pytest.mark.django_db(transaction=True)
def test_a_chunked_row_that_stops_matching_loses_all_its_chunks(make_task, source_db, run_in_thread):
    _, conn = source_db
    task = make_task(20, batch_size=8, template="{title}\n\n{body}")
    task = save_task(name=task.name, source=task.source, store=task.store, chunk_size=32, chunk_overlap=4,
                     row_filter=parse_lines(KEPT))
    run_in_thread(task)

    def row_keys() -> set:
        return {split_chunk_key(key) for key in target_rows(task)}

    expected = set(source_rows(conn, where=KEPT))
    wait_until(lambda: row_keys() == expected, timeout=300, message="the kept rows' chunks")
    long_row = max(expected, key=lambda k: sum(1 for p in target_rows(task) if split_chunk_key(p) == k))
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET stars = 0 WHERE id = %s", (long_row,))
    wait_until(lambda: row_keys() == expected - {long_row}, timeout=120, message="every chunk of the row to go")
