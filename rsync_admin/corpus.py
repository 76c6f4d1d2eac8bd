"""Real text for the demo, tests and benchmarks: the docstrings of Python's standard library.

No lorem ipsum and nothing downloaded: every machine with Python has about 6,000 of them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import warnings

# Modules that open windows, print, or are otherwise unsafe or pointless to import here.
_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "pydoc_data",
    "lib2to3", "ensurepip", "venv", "msilib", "winreg", "winsound", "_msi", "nt", "msvcrt",
    "_winapi", "_overlapped", "asyncio.windows_events", "xxsubtype", "test",
}

DOCS_TABLE_SQL = """
CREATE TABLE {table} (
  id BIGINT PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  module VARCHAR(128) NOT NULL,
  kind VARCHAR(16) NOT NULL,
  title VARCHAR(512) NOT NULL,
  body TEXT NOT NULL,
  stars INT NULL,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

# The same table for PostgreSQL (no ON UPDATE: updated_at keeps its insert time there).
DOCS_TABLE_SQL_POSTGRES = """
CREATE TABLE {table} (
  id BIGINT PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  module VARCHAR(128) NOT NULL,
  kind VARCHAR(16) NOT NULL,
  title VARCHAR(512) NOT NULL,
  body TEXT NOT NULL,
  stars INT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT LOCALTIMESTAMP
)
"""


@functools.cache
def stdlib_docstrings() -> list[dict]:
    """Entries `{name, module, kind, title, body}` in a stable order, first line as the title."""
    entries: list[dict] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in sorted(sys.stdlib_module_names):
            if module_name in _SKIP or module_name.startswith("_"):
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception:
                continue
            _add(entries, seen, module_name, module_name, "module", module)
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
                    continue
                if inspect.isclass(obj):
                    _add(entries, seen, f"{module_name}.{attr}", module_name, "class", obj)
                    for meth_name, meth in sorted(vars(obj).items()):
                        if not meth_name.startswith("_") and callable(meth):
                            _add(entries, seen, f"{module_name}.{attr}.{meth_name}", module_name, "method", meth)
                elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    _add(entries, seen, f"{module_name}.{attr}", module_name, "function", obj)
    return entries


def _add(entries: list[dict], seen: set[str], name: str, module: str, kind: str, obj) -> None:
    doc = inspect.getdoc(obj) if kind != "method" else getattr(obj, "__doc__", None)
    if not doc or name in seen or len(doc.strip()) < 20:
        return
    seen.add(name)
    doc = inspect.cleandoc(doc)
    title, _, rest = doc.partition("\n")
    entries.append({"name": name[:255], "module": module[:128], "kind": kind, "title": title.strip()[:512],
                    "body": (rest.strip() or title.strip())[:60000]})


def rows(count: int, *, start_id: int = 1) -> list[dict]:
    """`count` rows with ids from `start_id`; beyond the corpus size the texts repeat with a suffix."""
    corpus = stdlib_docstrings()
    out = []
    for i in range(count):
        entry = corpus[i % len(corpus)]
        lap = i // len(corpus)
        suffix = f" (copy {lap})" if lap else ""
        out.append({"id": start_id + i, **entry, "title": entry["title"][:500] + suffix, "stars": i % 50})
    return out


def is_postgres(conn) -> bool:
    """Whether `conn` is a psycopg2 connection (else a pymysql one)."""
    return type(conn).__module__.startswith("psycopg2")


def _quote(conn, name: str) -> str:
    return f'"{name}"' if is_postgres(conn) else f"`{name}`"


def create_docs_table(conn, table: str = "docs", count: int = 0, *, batch: int = 1000) -> None:
    """(Re)create the docs table on a pymysql or psycopg2 connection and load `count` rows."""
    ddl = DOCS_TABLE_SQL_POSTGRES if is_postgres(conn) else DOCS_TABLE_SQL
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {_quote(conn, table)}")
        cur.execute(ddl.format(table=_quote(conn, table)))
    insert_rows(conn, table, rows(count), batch=batch)


def insert_rows(conn, table: str, items: list[dict], *, batch: int = 1000) -> None:
    columns = ("id", "name", "module", "kind", "title", "body", "stars")
    sql = f"INSERT INTO {_quote(conn, table)} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    autocommit = conn.autocommit if is_postgres(conn) else conn.get_autocommit()
    with conn.cursor() as cur:
        for start in range(0, len(items), batch):
            part = [tuple(r[c] for c in columns) for r in items[start : start + batch]]
            if is_postgres(conn):  # psycopg2's executemany sends one statement per row
                from psycopg2.extras import execute_values

                execute_values(cur, sql.split(" VALUES ")[0] + " VALUES %s", part, page_size=batch)
            else:
                cur.executemany(sql, part)
            if not autocommit:
                conn.commit()
