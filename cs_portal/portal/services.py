"""Writes of the support portal: API clients, agents, conversations and messages."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q

from cs_portal.portal.models import (
    AgentProfile,
    ApiClient,
    Conversation,
    ConversationStatus,
    Customer,
    LanguageSource,
    Message,
    Sender,
)
from translation import errors, languages
from translation.detection import detect_language
from translation.services import translation_request


def api_client_create(*, name: str) -> tuple[ApiClient, str]:
    """A new API client and its key; the key is returned once and only its hash is kept."""
    key = ApiClient.new_key()
    client = ApiClient.objects.create(name=name, key_prefix=key[:8], key_hash=ApiClient.hash_key(key))
    return client, key


def api_client_rotate_key(*, client: ApiClient) -> str:
    """A new key for ``client``; the old one stops working at once."""
    key = ApiClient.new_key()
    client.key_prefix, client.key_hash = key[:8], ApiClient.hash_key(key)
    client.save(update_fields=["key_prefix", "key_hash"])
    return key


@transaction.atomic
def agent_create(*, username: str, password: str, working_language: str, is_staff: bool = False) -> AgentProfile:
    language_validate(working_language, supported_only=False)
    user = get_user_model().objects.create_user(username=username, password=password, is_staff=is_staff)
    return AgentProfile.objects.create(user=user, working_language=working_language)


def language_validate(code: str, *, supported_only: bool = True) -> str:
    """``code`` itself when it is a known (and, by default, supported) ISO 639-1 code."""
    if not isinstance(code, str) or not languages.is_known(code):
        raise errors.ApplicationError(errors.LANGUAGE_UNKNOWN.format(code=code), code="language_unknown")
    if supported_only and code not in settings.SUPPORTED_LANGUAGES:
        supported = ", ".join(settings.SUPPORTED_LANGUAGES)
        raise errors.ApplicationError(
            errors.LANGUAGE_UNSUPPORTED.format(code=code, supported=supported), code="language_unsupported"
        )
    return code


def text_validate(text: str) -> str:
    """The text as stored: surrounding whitespace removed, not empty, within the limit."""
    cleaned = text.strip()
    if not cleaned:
        raise errors.ApplicationError(errors.TEXT_EMPTY, code="text_empty")
    if len(cleaned) > settings.MESSAGE_MAX_CHARS:
        raise errors.ApplicationError(
            errors.TEXT_TOO_LONG.format(length=len(cleaned), limit=settings.MESSAGE_MAX_CHARS), code="text_too_long"
        )
    return cleaned


def _agent_for_new_conversation() -> AgentProfile | None:
    """The available agent with the fewest open conversations."""
    return (
        AgentProfile.objects.filter(is_available=True, user__is_active=True)
        .annotate(open_count=Count("conversations", filter=Q(conversations__status=ConversationStatus.OPEN)))
        .order_by("open_count", "id")
        .first()
    )


@transaction.atomic
def conversation_create(
    *,
    api_client: ApiClient,
    customer_name: str,
    customer_email: str = "",
    external_id: str = "",
    language: str | None = None,
    subject: str = "",
) -> Conversation:
    if language is not None:
        language_validate(language)
    customer = None
    if external_id:
        customer = Customer.objects.filter(api_client=api_client, external_id=external_id).first()
    if customer is None:
        customer = Customer.objects.create(
            api_client=api_client, name=customer_name, email=customer_email, external_id=external_id
        )
    return Conversation.objects.create(
        customer=customer, assignee=_agent_for_new_conversation(), language=language or "", subject=subject
    )


def _agent_language(conversation: Conversation) -> str:
    if conversation.assignee_id:
        return conversation.assignee.working_language
    return settings.DEFAULT_AGENT_LANGUAGE


@transaction.atomic
def message_create_from_customer(*, conversation: Conversation, text: str, language: str | None = None) -> Message:
    """Store a customer message and request its translation into the agent's language."""
    text = text_validate(text)
    if conversation.status == ConversationStatus.CLOSED:
        raise errors.ApplicationError(errors.CONVERSATION_CLOSED.format(id=conversation.pk), code="conversation_closed")
    confidence = None
    if language is not None:
        source = LanguageSource.CLIENT
        language = language_validate(language)
    else:
        detection = detect_language(text)
        if detection is not None:
            source, language, confidence = LanguageSource.DETECTED, detection.language, detection.confidence
        elif conversation.language:
            source, language = LanguageSource.CONVERSATION, conversation.language
        else:
            raise errors.ApplicationError(errors.LANGUAGE_UNDETECTED, code="language_undetected")
    message = Message.objects.create(
        conversation=conversation, sender=Sender.CUSTOMER, text=text, language=language,
        language_source=source, detection_confidence=confidence,
    )
    if not conversation.language:
        conversation.language = language
    conversation.save(update_fields=["language", "updated_at"])
    target = _agent_language(conversation)
    if target != language:
        translation_request(message=message, target_language=target)
    return message


@transaction.atomic
def message_create_from_agent(*, conversation: Conversation, agent: AgentProfile, text: str) -> Message:
    """Store an agent's reply (in the agent's language) and request it in the customer's language."""
    text = text_validate(text)
    if conversation.status == ConversationStatus.CLOSED:
        raise errors.ApplicationError(errors.CONVERSATION_CLOSED.format(id=conversation.pk), code="conversation_closed")
    message = Message.objects.create(
        conversation=conversation, sender=Sender.AGENT, author=agent, text=text,
        language=agent.working_language, language_source=LanguageSource.AGENT,
    )
    if conversation.assignee_id is None:
        conversation.assignee = agent
    conversation.save(update_fields=["assignee", "updated_at"])
    target = conversation.language or settings.DEFAULT_AGENT_LANGUAGE
    if target != message.language:
        translation_request(message=message, target_language=target)
    return message
