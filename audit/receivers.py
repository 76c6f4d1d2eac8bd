"""Sign-in events come from Django's auth framework, whose only hooks are its signals."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from accounts.services import record_failed_sign_in

from . import services
from .context import AuditContext


def _context(request, user=None) -> AuditContext | None:
    if request is None:
        return None
    base = AuditContext.from_request(request)
    return AuditContext(actor=user, ip_address=base.ip_address, user_agent=base.user_agent,
                        request_id=base.request_id)


@receiver(user_logged_in)
def on_login(sender, request, user, **kwargs) -> None:
    services.record(action="login", obj=user, actor=user, context=_context(request, user))


@receiver(user_logged_out)
def on_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        services.record(action="logout", obj=user, actor=user, context=_context(request, user))


@receiver(user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    record_failed_sign_in(username=credentials.get("username", ""), request=request)
