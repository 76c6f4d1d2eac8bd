"""The console in a real browser against a live server and a real worker.

Chromium (Debian's, driven by Playwright) talks to daphne, the ASGI server of a deployment, so the
websocket is the real one; a Celery worker subprocess runs the task. Both share the test database
and the private MariaDB, Redis and Milvus Lite servers with this process. A user logs in, creates a
source, a store and a task through the forms (table and columns picked from the live catalog),
starts it, watches the counters rise without reloading the page and searches the collection.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounts.roles import ADMIN, sync_role_groups
from accounts.services import create_user
from rsync_admin import devservers
from rsync_admin.corpus import create_docs_table, insert_rows, stdlib_docstrings

from .conftest import unique

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROJECT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
USERNAME, PASSWORD = "browser-admin", "Browser-test-pw-7391"
# A docs table of a few modules' docstrings: the query below has two right answers in it (argparse
# and getopt) and many wrong ones; argparse and getopt come first so they are written early.
MODULES = ("argparse", "getopt", "base64", "csv", "fnmatch", "glob", "gzip", "hashlib", "heapq", "json", "shlex",
           "textwrap", "uuid", "zipfile")  # 141 rows
QUERY = "parse command-line options"
EXPECTED_MODULES = {"argparse", "getopt"}
BATCH_SIZE = 8  # about 18 batches: the counters move many times during the snapshot


def docs_rows() -> list[dict]:
    by_module = {m: [e for e in stdlib_docstrings() if e["module"] == m] for m in MODULES}
    entries = [e for m in MODULES for e in by_module[m]]
    return [{"id": i, **e, "stars": i % 50} for i, e in enumerate(entries, 1)]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout}s:\n{log.read_text()[-3000:]}")


def _wait_log(text: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in the log (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def web_server(subprocess_env, tmp_path) -> str:
    """daphne on a free port, sharing the test database and Redis: the base URL."""
    port = devservers.free_port()
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "rsync_admin.asgi:application"],
            env=subprocess_env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT,
        )
    try:
        _wait_port(port, proc, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def worker(subprocess_env, tmp_path) -> subprocess.Popen:
    """A Celery worker (threads, as in production) on the private Redis."""
    log_path = tmp_path / "worker.log"
    env = dict(subprocess_env, CELERY_BROKER_URL=subprocess_env["REDIS_URL"])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "rsync_admin", "worker", "--pool=threads", "--concurrency=2",
             "--loglevel=INFO", "--without-gossip", "--without-mingle", "--hostname", f"browser-{os.getpid()}@%h"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT,
        )
    try:
        _wait_log(" ready.", proc, log_path)
        yield proc
    finally:
        # A runner keeps its worker slot while its task streams: stop the tasks first, so that the
        # worker's warm shutdown does not wait for them.
        from tasks.models import SyncTask
        from tasks.services import stop_task

        for task in SyncTask.objects.filter(desired_state=SyncTask.DesiredState.RUNNING):
            stop_task(task)
        _stop(proc)


@pytest.fixture
def page(monkeypatch):
    """A headless Chromium page; uncaught page errors are collected in `page.errors`."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    # Playwright's sync API keeps an event loop in this thread; the ORM would refuse to run next to it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page, name: str):
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"), full_page=True)
        with contextlib.suppress(Exception):
            (ARTIFACTS / f"{name}-failure.html").write_text(page.content())
        raise


# Wraps the browser's WebSocket: the test can close the page's sockets and refuse new ones
# (`new WebSocket` throws, as it does for a blocked address), and allow them again.
SOCKET_SWITCH = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.__blockSockets = false;
  function Switched(url, protocols) {
    if (window.__blockSockets) throw new Error("websocket blocked by the test");
    const socket = protocols === undefined ? new Native(url) : new Native(url, protocols);
    window.__sockets.push(socket);
    return socket;
  }
  Switched.prototype = Native.prototype;
  for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Switched[name] = Native[name];
  window.WebSocket = Switched;
})();
"""


def open_page(page, click: str, path: str) -> None:
    """Follow a link like a user, and wait until the new page's scripts (htmx) are ready."""
    from playwright.sync_api import expect

    page.click(click)
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))
    page.wait_for_load_state("load")
    page.wait_for_function("() => !!window.htmx")


def shown_number(page, selector: str) -> int:
    """A number as the page shows it ("1,234" or "?")."""
    text = page.locator(selector).inner_text().strip().replace(",", "")
    return int(text) if text.isdigit() else 0


def wait_htmx_idle(page, timeout: float = 60.0) -> None:
    """No htmx request, swap or settle in flight."""
    page.wait_for_function(
        "() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')", timeout=timeout * 1000,
    )


def wait_number_change(page, selector: str, previous: int, timeout: float) -> int:
    page.wait_for_function(
        """([selector, previous]) => {
            const el = document.querySelector(selector);
            const value = Number((el ? el.textContent : "").replace(/,/g, "").trim());
            return Number.isFinite(value) && value !== previous;
        }""",
        arg=[selector, previous], timeout=timeout * 1000,
    )
    return shown_number(page, selector)


def test_a_user_syncs_a_table_and_searches_it_in_the_browser(
    page, web_server, worker, mariadb, milvus_server, source_db,
):
    from playwright.sync_api import expect

    database, conn = source_db
    create_docs_table(conn, "docs", 0)
    rows = docs_rows()
    insert_rows(conn, "docs", rows)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (id INT PRIMARY KEY, note TEXT)")  # a second table to pick from
    sync_role_groups()  # transactional tests empty the groups the migration made
    create_user(username=USERNAME, password=PASSWORD, roles=[ADMIN])
    source_name, store_name, task_name = (unique(p).replace("_", "-") for p in ("source", "store", "task"))
    base = web_server

    # Lets the test cut the page's websocket, as a proxy timeout or a sleeping laptop would.
    page.add_init_script(SOCKET_SWITCH)
    with screenshot_on_failure(page, "browser"):
        # Log in.
        page.goto(f"{base}/login/")
        expect(page.locator("h1")).to_have_text("Log in")
        assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).display") != "inline", \
            "console.css did not load"
        page.fill("#id_username", USERNAME)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        expect(page).to_have_url(f"{base}/")
        expect(page.locator("#nav-user")).to_have_text(USERNAME)

        # A data source: the private MariaDB.
        open_page(page, "#nav-sources", "/sources/")
        open_page(page, "#source-create", "/sources/new/")
        page.fill("#id_name", source_name)
        page.select_option("#id_kind", "mysql")
        page.fill("#id_host", "127.0.0.1")
        page.fill("#id_port", str(mariadb.port))
        page.fill("#id_database", database)
        page.fill("#id_user", "root")
        page.click("#source-save")
        expect(page.locator("#source-list")).to_contain_text(source_name)

        # A vector store: the private Milvus Lite server.
        open_page(page, "#nav-stores", "/stores/")
        open_page(page, "#store-create", "/stores/new/")
        page.fill("#id_name", store_name)
        page.select_option("#id_kind", "milvus")
        page.fill("#id_uri", f"http://127.0.0.1:{milvus_server.port}")
        page.click("#store-save")
        expect(page.locator("#store-list")).to_contain_text(store_name)

        # A task: the table and columns come from the live catalog of the source.
        open_page(page, "#nav-tasks", "/tasks/")
        open_page(page, "#task-create", "/tasks/new/")
        page.fill("#id_name", task_name)
        page.select_option("#id_source", label=source_name)
        table = page.locator("#catalog #id_table")
        expect(table.locator("option[value='docs']")).to_have_count(1, timeout=30_000)
        expect(table.locator("option[value='notes']")).to_have_count(1)
        # The table picker was just swapped in: let htmx finish wiring it before choosing, or the
        # change event can fire before htmx listens for it (seen on a loaded machine).
        wait_htmx_idle(page)
        table.select_option("docs")
        expect(page.locator("#table-primary-key")).to_have_text("Primary key: id", timeout=60_000)
        page.fill("#id_text_template", "")
        page.click("#table-columns [data-column='title']")
        page.keyboard.press("Enter")
        page.keyboard.press("Enter")
        page.click("#table-columns [data-column='body']")
        expect(page.locator("#id_text_template")).to_have_value("{title}\n\n{body}")
        for column in ("name", "module"):
            page.check(f"#catalog input[name='payload_columns'][value='{column}']")
        page.select_option("#id_store", label=store_name)
        page.select_option("#id_mode", "full+incremental")
        page.fill("#id_batch_size", str(BATCH_SIZE))
        page.click("#task-preview")
        expect(page.locator("#preview .preview-row")).to_have_count(5, timeout=30_000)
        expect(page.locator("#preview")).to_contain_text(rows[0]["title"])
        page.click("#task-save")
        expect(page.locator("#task-name")).to_have_text(task_name)
        expect(page.locator("#progress-status")).to_have_text("never run")

        # Start it: the worker runs it and the page follows over the websocket.
        frames: list[str] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(str(frame))))
        page.click("#task-start")
        started = time.monotonic()
        expect(page.locator("#messages")).to_contain_text(f"Started {task_name}")
        expect(page.locator("#live-connection")).to_have_text("live", timeout=30_000)
        page.evaluate("window.__notReloaded = true")

        counter = "#counter-rows_upserted"
        seen = [shown_number(page, counter)]
        first_batch = 0.0
        first_wait = 120.0  # the worker loads the embedding model before the first batch
        while seen[-1] < len(rows):
            seen.append(wait_number_change(page, counter, seen[-1], timeout=first_wait if len(seen) == 1 else 60.0))
            if len(seen) == 2:
                first_batch = time.monotonic() - started
        snapshot_done = time.monotonic() - started
        assert seen == sorted(seen), f"the counter went down: {seen}"
        intermediate = [v for v in seen if 0 < v < len(rows)]
        assert len(intermediate) >= 2, f"the counter should rise step by step, saw {seen}"
        expect(page.locator("#progress-phase")).to_have_text("stream", timeout=30_000)
        expect(page.locator("#progress-status")).to_have_text("running")
        for name, value in (("read", len(rows)), ("embedded", len(rows)), ("failed", 0)):
            expect(page.locator(f"#counter-rows_{name}")).to_have_text(f"{value:,}")
        assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
        assert frames, "no event came over the websocket"

        # Search the collection.
        page.fill("#search-input", QUERY)
        page.press("#search-input", "Enter")
        searched = time.monotonic()
        hits = page.locator("#search-hits .hit")
        expect(hits.first).to_be_visible(timeout=90_000)
        expect(page.locator("#search-summary")).to_contain_text(QUERY)
        top = [hits.nth(i).locator("dl.payload div:has(dt:text-is('module')) dd").inner_text()
               for i in range(min(3, hits.count()))]
        assert EXPECTED_MODULES & set(top), f"top hits for {QUERY!r} come from {top}"
        search_time = time.monotonic() - searched

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-task-page.png"), full_page=True)

        def insert_and_see(name: str, title: str, body: str, connection: str) -> None:
            """A new row reaches the counter, still without a reload, while the page is `connection`."""
            count = len(rows) + len(extra) + 1
            extra.append(name)
            insert_rows(conn, "docs", [{**rows[0], "id": count, "name": f"kitchen.{name}", "module": "kitchen",
                                        "title": title, "body": body}])
            expect(page.locator(counter)).to_have_text(f"{count:,}", timeout=30_000)
            expect(page.locator("#counter-rows_read")).to_have_text(f"{count:,}")
            expect(page.locator("#live-connection")).to_contain_text(connection)
            assert page.evaluate("window.__notReloaded") is True, "the page reloaded"

        # A row inserted into the source arrives through the change stream.
        extra: list[str] = []
        insert_and_see("bread", "Bake sourdough bread", "Flour, water, starter and time.", "live")
        # The socket drops and cannot reconnect for a while: the page falls back to polling and
        # still shows the next row; once the socket can connect again it goes live and the row
        # after comes over it.
        page.evaluate("window.__blockSockets = true; window.__sockets.forEach((socket) => socket.close())")
        expect(page.locator("#live-connection")).to_contain_text("polling every 2 s", timeout=10_000)
        insert_and_see("soup", "Simmer a vegetable soup", "Leeks, potatoes, stock.", "polling every 2 s")
        page.evaluate("window.__blockSockets = false")
        expect(page.locator("#live-connection")).to_have_text("live", timeout=60_000)
        insert_and_see("tea", "Brew green tea", "Water at 80 degrees, two minutes.", "live")

        # Stop: the runner ends its batch and the page says so.
        page.click("#task-stop")
        expect(page.locator("#messages")).to_contain_text(f"Asked {task_name} to stop")
        expect(page.locator("#progress-status")).to_have_text("stopped", timeout=30_000)
        expect(page.locator("#task-desired-state")).to_have_text("stopped")
        # A reload draws the last minutes of throughput from the kept events: the chart is not empty.
        page.reload()
        page.wait_for_load_state("load")
        points = page.locator("#chart-rate").get_attribute("points") or ""
        assert len(points.split()) >= 3, f"the chart is empty after a reload: {points!r}"
        assert min(float(p.split(",")[1]) for p in points.split()) < 172, "no throughput drawn"

        # At a phone's width every part of the page still fits (wide tables scroll inside their box).
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.wait_for_load_state("load")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the task page is {overflow}px wider than a phone's screen"
        expect(page.locator("#task-start")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "browser-task-page-phone.png"), full_page=True)
        print(f"first batch {first_batch:.1f}s after Start, all {len(rows)} rows at {snapshot_done:.1f}s; "
              f"counter values seen: {seen}; search {search_time:.1f}s, top modules: {top}")
    assert not page.errors, f"JavaScript errors on the page: {page.errors}"
