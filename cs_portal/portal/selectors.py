"""Reads of the support portal."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from cs_portal.portal.models import AgentProfile, ApiClient, Conversation, Message
from translation import errors
from translation.models import Translation


# "Last used" is for people revoking stale keys: minute precision, not a write per request.
LAST_USED_PRECISION = timedelta(minutes=1)


def api_client_by_key(key: str) -> ApiClient | None:
    client = ApiClient.objects.filter(key_hash=ApiClient.hash_key(key), is_active=True).first()
    now = timezone.now()
    if client is not None and (client.last_used_at is None or now - client.last_used_at > LAST_USED_PRECISION):
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
    return client


def conversation_get_for_client(*, api_client: ApiClient, conversation_id: int) -> Conversation:
    conversation = (
        Conversation.objects.select_related("customer", "assignee")
        .filter(pk=conversation_id, customer__api_client=api_client)
        .first()
    )
    if conversation is None:
        raise errors.NotFound(errors.CONVERSATION_NOT_FOUND.format(id=conversation_id), code="conversation_not_found")
    return conversation


def conversation_get_for_agent(*, agent: AgentProfile, conversation_id: int) -> Conversation:
    conversation = Conversation.objects.select_related("customer", "assignee").filter(pk=conversation_id).first()
    if conversation is None:
        raise errors.NotFound(errors.CONVERSATION_NOT_FOUND.format(id=conversation_id), code="conversation_not_found")
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.prefetch_related(
        Prefetch("translations", queryset=Translation.objects.order_by("target_language"))
    ).select_related("author__user")
