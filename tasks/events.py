"""Task events: progress and notices, numbered per task, kept briefly in Redis and pushed to the
websocket group `task-<id>`.

`seq` comes from a Redis counter per task, so it only grows across runs and workers; the last
EVENTS_KEPT events stay in a capped list so a page that lost its socket catches up through the API.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .locks import redis_client

logger = logging.getLogger(__name__)

EVENTS_KEPT = 500


def group_name(task_id: int) -> str:
    return f"task-{task_id}"


def _keys(task_id: int) -> tuple[str, str]:
    return f"rsync:task:{task_id}:seq", f"rsync:task:{task_id}:events"


def publish(task_id: int, payload: dict, *, client: redis.Redis | None = None) -> dict:
    """Number the event, stamp it (`at`, seconds since the epoch, so a page can draw history), keep
    it, and push it to the task's websocket group."""
    seq_key, list_key = _keys(task_id)
    client = client or redis_client()
    event = dict(payload, seq=int(client.incr(seq_key)), at=round(time.time(), 3))
    pipe = client.pipeline()
    pipe.lpush(list_key, json.dumps(event))
    pipe.ltrim(list_key, 0, EVENTS_KEPT - 1)
    pipe.execute()
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group_name(task_id), {"type": "task.event", "event": event})
    return event


def events_after(task_id: int, after: int = 0, *, limit: int = EVENTS_KEPT) -> list[dict]:
    """Kept events with `seq > after`, oldest first."""
    _, list_key = _keys(task_id)
    raw = redis_client().lrange(list_key, 0, EVENTS_KEPT - 1)
    events = [json.loads(item) for item in reversed(raw)]
    return [e for e in events if e["seq"] > after][:limit]


def latest_event(task_id: int) -> dict | None:
    """The newest kept event of a task, or None (also when Redis cannot be reached: pages that
    show it must render without it)."""
    _, list_key = _keys(task_id)
    try:
        raw = redis_client().lindex(list_key, 0)
    except (redis.RedisError, OSError):
        logger.warning("cannot read the kept events of task %s", task_id, exc_info=True)
        return None
    return json.loads(raw) if raw else None


def recent_events(task_id: int, *, seconds: float) -> list[dict]:
    """Kept events of the last `seconds`, oldest first ([] when Redis cannot be reached)."""
    try:
        kept = events_after(task_id, 0)
    except (redis.RedisError, OSError):
        logger.warning("cannot read the kept events of task %s", task_id, exc_info=True)
        return []
    since = time.time() - seconds
    return [e for e in kept if (e.get("at") or 0) >= since]


class EventPublisher:
    """A progress publisher for the runner; a Redis hiccup never stops a sync."""

    takes_notices = True  # the task page shows them under "Recent errors and notices"

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        self.client = redis_client()

    def __call__(self, payload: dict) -> None:
        try:
            publish(self.task_id, payload, client=self.client)
        except Exception:
            logger.warning("cannot publish progress of task %s", self.task_id, exc_info=True)
