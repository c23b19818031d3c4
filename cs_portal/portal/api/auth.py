"""Authentication of the customer channel: ``Authorization: Bearer <API key>``."""

from __future__ import annotations

from rest_framework import authentication, exceptions, permissions

from cs_portal.portal.models import AgentProfile, ApiClient
from cs_portal.portal.selectors import api_client_by_key

INVALID_KEY = "Invalid or revoked API key."
MALFORMED_HEADER = "Malformed Authorization header: expected 'Bearer <API key>'."
NOT_AN_AGENT = "This account has no agent profile."


class ApiClientAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0].lower() != self.keyword.lower():  # a scheme is case-insensitive (RFC 9110)
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(MALFORMED_HEADER)
        client = api_client_by_key(header[1])
        if client is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        return (None, client)

    def authenticate_header(self, request) -> str:
        return self.keyword


class IsApiClient(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiClient)


class IsAgent(permissions.BasePermission):
    message = NOT_AN_AGENT

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and AgentProfile.objects.filter(user=user).exists())
