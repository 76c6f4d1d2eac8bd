"""One runner per task: a Redis lock with a TTL, kept alive by a heartbeat thread.

A runner killed with SIGKILL leaves its lock until the TTL runs out; a runner on the same host
whose process is gone is recognised at once, so a restart after a crash does not wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_STEAL = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunnerLock:
    def __init__(self, task_id: int, *, ttl: float | None = None, client: redis.Redis | None = None) -> None:
        self.key = f"rsync:runner-lock:task:{task_id}"
        self.ttl_ms = int((ttl or settings.RSYNC_LOCK_TTL) * 1000)
        self.client = client or redis_client()
        self.value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex})
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        raw = self.client.get(self.key)
        return json.loads(raw) if raw else None

    def try_acquire(self) -> bool:
        if self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            return True
        raw = self.client.get(self.key)
        if raw is None:
            return bool(self.client.set(self.key, self.value, nx=True, px=self.ttl_ms))
        holder = json.loads(raw)
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
            logger.info("taking over the lock of dead runner pid %s", holder.get("pid"))
            return bool(self.client.eval(_STEAL, 1, self.key, raw, self.value, self.ttl_ms))
        return False

    def acquire(self, *, wait: float = 0.0, on_wait=None) -> bool:
        deadline = time.monotonic() + wait
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            if on_wait:
                on_wait(self.holder())
            time.sleep(0.5)
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.key}", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.client.eval(_EXTEND, 1, self.key, self.value, self.ttl_ms):
                    logger.error("runner lock %s was lost", self.key)
                    self.lost.set()
                    return
            except redis.RedisError:
                logger.warning("cannot extend runner lock %s; retrying", self.key, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE, 1, self.key, self.value)
        except redis.RedisError:
            logger.warning("cannot release runner lock %s; it expires by itself", self.key)
