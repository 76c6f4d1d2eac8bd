"""What the benchmarks share: paths, timing and percentiles, the Django environment of a private
run, the task they build and the description of the machine. Imported by `sync_throughput.py`
and `connectors_throughput.py` (run as scripts, so this folder is on `sys.path`)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
TEMPLATE = "{title}\n\n{body}"
PAYLOAD = ["name", "module", "stars"]
MIB = 1024 * 1024
T0 = time.monotonic()  # when the benchmark started (this module is imported first)


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def rnd(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


# -- Django ----------------------------------------------------------------------------------------


def configure_environment(workdir: Path, redis_port: int, *, embed_cache_ttl: int) -> None:
    """Settings for this process and its children (they inherit os.environ): `tests.settings`
    with a metadata database and run folder in `workdir`, the private Redis, and the product's
    runner defaults rather than the test suite's shorter timeouts. `embed_cache_ttl` 0 turns
    the embedding cache off (every row embedded: a cache hit would measure Redis)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'meta.sqlite3'}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
    os.environ["RSYNC_RUN_DIR"] = str(workdir / "run")
    os.environ["RSYNC_ENV_FILE"] = str(workdir / "no.env")  # never read a developer's .env
    os.environ["DJANGO_DEBUG"] = "false"  # with DEBUG on, Django keeps every SQL query in memory
    os.environ["DJANGO_SECRET_KEY"] = "bench-only-" + os.urandom(16).hex()
    os.environ["RSYNC_EMBED_CACHE_TTL"] = str(embed_cache_ttl)
    os.environ["RSYNC_LOCK_TTL"] = "30"
    os.environ["RSYNC_BINLOG_HEARTBEAT"] = "1.0"
    os.environ["RSYNC_BINLOG_READ_TIMEOUT"] = "10"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup_django() -> None:
    import django
    from django.conf import settings

    django.setup()
    settings.REDIS_URL = os.environ["REDIS_URL"]
    settings.CELERY_BROKER_URL = os.environ["REDIS_URL"]
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [settings.REDIS_URL]}}
    }


def make_task(source, store, *, name: str, table: str, mode: str, template: str = TEMPLATE):
    from tasks.services import save_task

    return save_task(
        name=name, source=source, store=store, table=table, text_template=template,
        payload_columns=PAYLOAD, collection=name.replace("-", "_"), mode=mode,
    )


# -- reporting --------------------------------------------------------------------------------------


def machine_info() -> dict:
    import importlib.metadata as md

    import psutil
    import torch

    versions = {}
    for name in ("torch", "sentence-transformers", "transformers", "pymilvus", "milvus-lite", "qdrant-client",
                 "PyMySQL", "mysql-replication", "psycopg2-binary", "psycopg2", "Django"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_total_mib": round(psutil.virtual_memory().total / MIB),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }
