"""Settings for the test suite: the product's settings with test keys and a file database.

A file (not in-memory) SQLite database lets `manage.py run_task` subprocesses share it.
"""

import os
import tempfile

os.environ.setdefault("RSYNC_ENCRYPTION_KEYS", "test=" + "dGVzdC1rZXktZm9yLWRhdGEtcnN5bmMtdGVzdHMtMDE=")
os.environ.setdefault("RSYNC_LOCK_TTL", "5")
# Tests count model calls; the embedding cache (shared Redis, one per session) is turned on only
# by the tests that are about it.
os.environ.setdefault("RSYNC_EMBED_CACHE_TTL", "0")
os.environ.setdefault("RSYNC_BINLOG_HEARTBEAT", "0.5")
os.environ.setdefault("RSYNC_BINLOG_READ_TIMEOUT", "5")
os.environ.setdefault("RSYNC_RUN_DIR", tempfile.mkdtemp(prefix="rsync-test-run-"))
os.environ.setdefault(
    "RSYNC_TEST_DATABASE", os.path.join(os.environ["RSYNC_RUN_DIR"], "test-db.sqlite3")
)

from rsync_admin.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

os.makedirs(STATIC_ROOT, exist_ok=True)  # noqa: F405 -- whitenoise wants it to exist
