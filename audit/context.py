"""Who is acting, from where: captured per request (or per command) for the audit log."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class AuditContext:
    actor: object | None = None  # a User, or None for the system
    ip_address: str | None = None
    user_agent: str = ""
    request_id: str = ""

    @classmethod
    def from_request(cls, request) -> AuditContext:
        user = getattr(request, "user", None)
        return cls(
            actor=user if user is not None and user.is_authenticated else None,
            ip_address=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
            request_id=request.META.get("HTTP_X_REQUEST_ID", "")[:64] or uuid.uuid4().hex,
        )


_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


def current() -> AuditContext:
    return _current.get() or AuditContext()


def activate(context: AuditContext) -> contextvars.Token:
    return _current.set(context)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)


def client_ip(request) -> str | None:
    """The client address; X-Forwarded-For is trusted only behind a proxy we were told about."""
    from django.conf import settings

    if getattr(settings, "RSYNC_TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


class AuditContextMiddleware:
    """Makes the request's actor, address, user agent and request id available to services."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = activate(AuditContext.from_request(request))
        try:
            response = self.get_response(request)
        finally:
            deactivate(token)
        return response
