"""Sign-in throttling against password guessing, per user name and per client address.

Counts live in Redis (shared by every web process); a lock-out ends by itself after the window.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def _keys(username: str, ip: str | None) -> list[str]:
    name = hashlib.sha256(username.lower().encode()).hexdigest()[:16]
    return [f"rsync:login-fail:user:{name}", f"rsync:login-fail:ip:{ip or '-'}"]


def _client():
    from tasks.locks import redis_client

    return redis_client()


def locked_for(username: str, ip: str | None) -> int:
    """Seconds until another attempt is allowed (0: allowed now)."""
    try:
        client = _client()
        limits = (settings.RSYNC_LOGIN_MAX_FAILURES, settings.RSYNC_LOGIN_MAX_FAILURES * 4)
        for key, limit in zip(_keys(username, ip), limits, strict=True):
            count = int(client.get(key) or 0)
            if count >= limit:
                return max(int(client.ttl(key)), 1)
    except Exception:  # Redis down: do not lock everyone out, but say so in the log
        logger.warning("login throttle unavailable", exc_info=True)
    return 0


def record_failure(username: str, ip: str | None) -> None:
    try:
        client = _client()
        pipe = client.pipeline()
        for key in _keys(username, ip):
            pipe.incr(key)
            pipe.expire(key, settings.RSYNC_LOGIN_WINDOW, nx=True)
        pipe.execute()
    except Exception:
        logger.warning("login throttle unavailable", exc_info=True)


def record_success(username: str, ip: str | None) -> None:
    try:
        _client().delete(_keys(username, ip)[0])
    except Exception:
        logger.warning("login throttle unavailable", exc_info=True)
