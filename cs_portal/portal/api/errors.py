"""One error shape for every API answer: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from translation.errors import ApplicationError

MALFORMED_JSON = "Request body is not valid JSON: {detail}"


def _first_message(detail, path: str = "") -> str:
    """A readable sentence from DRF's nested validation detail: 'customer.name: This field is required.'"""
    if isinstance(detail, dict):
        for key, value in detail.items():
            return _first_message(value, f"{path}.{key}" if path else str(key))
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    return f"{path}: {detail}" if path and path != "non_field_errors" else str(detail)


DATABASE_UNREACHABLE = "The portal's database is unreachable; nothing was stored. Send again in a few seconds."


def api_exception_handler(exc, context):
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):  # an outage, not the request's fault
        response = Response({"error": {"code": "unavailable", "message": DATABASE_UNREACHABLE}}, status=503)
        response["Retry-After"] = "5"
        return response
    if isinstance(exc, ApplicationError):
        response = Response({"error": {"code": exc.code, "message": exc.message, **exc.extra}}, status=exc.status)
        if "retry_after" in exc.extra:
            response["Retry-After"] = str(exc.extra["retry_after"])
        return response
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        body = {"code": "invalid", "message": _first_message(exc.detail), "fields": exc.detail}
    elif isinstance(exc, exceptions.ParseError):
        body = {"code": "malformed_json", "message": MALFORMED_JSON.format(detail=exc.detail)}
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        body = {"code": "unauthenticated", "message": str(exc.detail)}
    else:
        body = {"code": getattr(exc, "default_code", "error"), "message": str(getattr(exc, "detail", exc))}
    response.data = {"error": body}
    return response


def api_not_found(request, exception=None):
    """Django's 404 for URLs the router does not know, in the API's error shape under /api/."""
    if request.path_info.startswith("/api/"):  # under URL_PREFIX too
        body = {"error": {"code": "not_found", "message": f"No API endpoint at {request.path}."}}
        return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)
