"""The REST API's shared parts: the router every app registers on, and the error handler.

Bad input is a 400 with per-field messages, unknown objects a 404, a source or store that is down
a 503 with what is wrong: never a 500 with a stack trace.
"""

from __future__ import annotations

import logging

import psycopg2
import pymysql
import redis
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from kombu.exceptions import OperationalError as BrokerError
from rest_framework import status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import APIException
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.permissions import can, perm_name
from audit import context as audit_context
from datasources.connectors.base import ConnectorError, Unavailable

logger = logging.getLogger(__name__)

router = DefaultRouter()



class Pagination(PageNumberPagination):
    """`?page=N`, and `?page_size=N` up to 500 (default 50)."""

    page_size_query_param = "page_size"
    max_page_size = 500


class ObjectPermissions(BasePermission):
    """The one permission path, for the API.

    Querysets come from the selectors, so an object the user may not view is a 404 before this
    runs; here an object they may view but not change, delete or run is a 403.
    """

    ACTION_RIGHTS = {
        "update": "change", "partial_update": "change", "destroy": "delete",
        "start": "run", "stop": "run", "resnapshot": "run",
        "replay_dead_letters": "run", "discard_dead_letters": "run",
    }

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        if getattr(view, "action", None) == "create":
            model = view.get_queryset().model
            return user.has_perm(perm_name(model, "add"))
        return True

    def has_object_permission(self, request, view, obj) -> bool:
        return can(request.user, self.ACTION_RIGHTS.get(getattr(view, "action", ""), "view"), obj)


class APIViewMixin:
    """What every API view shares.

    - Token authentication first, so an anonymous request gets 401 with `WWW-Authenticate: Token`
      (session first would make it a 403).
    - `?page_size=` pagination.
    - The audit context names the user DRF authenticated: the audit middleware runs before DRF and
      sees only session users, so without this a token user's changes would be recorded as "system".
    """

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [ObjectPermissions]
    pagination_class = Pagination

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # authenticates
        self._audit_token = audit_context.activate(audit_context.AuditContext.from_request(request))

    def finalize_response(self, request: Request, response: Response, *args, **kwargs) -> Response:
        token = getattr(self, "_audit_token", None)
        if token is not None:
            audit_context.deactivate(token)
            self._audit_token = None
        return super().finalize_response(request, response, *args, **kwargs)


class BadRequest(APIException):
    """A request that cannot be served as asked: 400 with `{"detail": message}`."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Bad request."
    default_code = "bad_request"


class Conflict(APIException):
    """The object's state forbids the action (in use, running): 409 with `{"detail": message}`."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object's current state does not allow this."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is not None:
        return response
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Unavailable):
        return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, ConnectorError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, redis.RedisError):
        logger.warning("Redis error in the API: %s", exc)
        return Response({"detail": "Cannot reach Redis (task events and runner locks live there); try again."},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, BrokerError):
        logger.warning("Celery broker error in the API: %s", exc)
        return Response({"detail": "Cannot reach the task queue (the Celery broker); the task is marked to run "
                                   "and starts once the broker is back."},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, (pymysql.err.OperationalError, psycopg2.OperationalError, OSError)):
        # A source connection that broke after it was opened (the connectors turn failures to
        # connect into ConnectorError themselves).
        logger.warning("source connection failed in the API: %s", exc)
        return Response({"detail": f"The connection to the source failed: {exc}"},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, ProtectedError):
        names = sorted({str(obj) for obj in exc.protected_objects})
        return Response({"detail": f"Still used by: {', '.join(names)}."}, status=status.HTTP_409_CONFLICT)
    logger.exception("unhandled API error")
    return Response({"detail": "Internal error; the server log has the details."},
                    status=status.HTTP_500_INTERNAL_SERVER_ERROR)
