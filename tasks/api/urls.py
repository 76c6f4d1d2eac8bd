"""API routes of the tasks app that are not plain viewsets (the router holds those).

Importing the view modules registers their viewsets on `rsync_admin.api.router`.
"""

from django.urls import path
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response

import datasources.api.views  # noqa: F401  (registers sources and stores)
import tasks.api.views  # noqa: F401  (registers tasks and runs)
from accounts import throttle
from accounts.services import record_failed_sign_in
from audit.context import client_ip


@extend_schema_view(
    post=extend_schema(tags=["auth"], auth=[], summary="Trade a username and password for an API token"),
)
class TokenView(ObtainAuthToken):
    """POST username and password; the answer's `token` goes in `Authorization: Token <token>`.

    Throttled like the sign-in page: repeated failures lock the user name and address for a while.
    """

    def post(self, request, *args, **kwargs):
        username = str(request.data.get("username", ""))
        ip = client_ip(request)
        wait = throttle.locked_for(username, ip)
        if wait:
            # The Django request: DRF's would authenticate again (a bad header would raise here).
            record_failed_sign_in(username=username, request=request._request, reason="throttled")
            return Response({"detail": f"Too many failed attempts; try again in {wait} seconds."},
                            status=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(wait)})
        try:
            response = super().post(request, *args, **kwargs)
        except serializers.ValidationError:
            throttle.record_failure(username, ip)
            raise
        throttle.record_success(username, ip)
        return response


urlpatterns = [
    path("auth/token/", TokenView.as_view(), name="api-token"),
]
