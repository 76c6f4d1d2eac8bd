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


def normalise_ip(value: str | None) -> str | None:
    """`value` as the audit log stores it, or None when it is not an IP address.

    The event's hash covers the address, and GenericIPAddressField rewrites IPv6 on save
    (`2001:DB8:0:0::1` is stored as `2001:db8::1`): hashing the string as received would make an
    untouched event look altered to `verify_audit`. An invalid address (a forwarded header can
    hold anything) would make the insert fail on PostgreSQL's inet column."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_ipv46_address
    from django.utils.ipv6 import clean_ipv6_address

    value = (value or "").strip()
    if not value:
        return None
    try:
        validate_ipv46_address(value)
    except ValidationError:
        return None
    return clean_ipv6_address(value) if ":" in value else value


def client_ip(request) -> str | None:
    """The client address, normalised; X-Forwarded-For is trusted only behind a proxy we were told about.

    Behind that proxy the last address in X-Forwarded-For is the one the proxy itself added; the ones
    before it came from the client and could say anything. A forwarded value that is not an address
    gives None (unknown) rather than the proxy's own address, which would name the wrong machine."""
    from django.conf import settings

    if getattr(settings, "RSYNC_TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded.strip():
            return normalise_ip(forwarded.split(",")[-1])
    return normalise_ip(request.META.get("REMOTE_ADDR"))


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
