"""Writes of the support portal: API clients, agents, conversations and messages."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from cs_portal.portal.models import (
    EVERY_TEAM_PERMISSION,
    AgentProfile,
    ApiClient,
    Conversation,
    ConversationStatus,
    Customer,
    LanguageSource,
    ConversationRead,
    Message,
    Sender,
    Team,
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
def agent_create(
    *, username: str, password: str, working_language: str, is_staff: bool = False, team: Team | None = None,
    native_languages: list[str] | tuple[str, ...] = (), every_team: bool = False,
) -> AgentProfile:
    """A new agent. ``is_staff``: may sign in to the admin (with the permissions given there);
    ``every_team``: sees every team's conversations (``EVERY_TEAM_PERMISSION``)."""
    language_validate(working_language, supported_only=False)
    native = sorted({language_validate(code, supported_only=False) for code in native_languages})
    username_validate(username)
    user = get_user_model().objects.create_user(username=username, password=password, is_staff=is_staff)
    if every_team:
        app_label, codename = EVERY_TEAM_PERMISSION.split(".", 1)
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return AgentProfile.objects.create(
        user=user, working_language=working_language, team=team, native_languages=native
    )


def username_validate(username: str) -> str:
    """A new sign-in name, as the admin's user form takes one: not empty, within the column's
    length, of letters, digits and @ . + - _ only."""
    from django.core.exceptions import ValidationError

    User = get_user_model()
    field = User._meta.get_field(User.USERNAME_FIELD)
    if not username:
        raise errors.ApplicationError("A username is required.", code="username_invalid")
    if len(username) > field.max_length:
        raise errors.ApplicationError(f"The username has {len(username)} characters; the limit is {field.max_length}.",
                                      code="username_invalid")
    try:
        User.username_validator(username)
    except ValidationError as exc:
        raise errors.ApplicationError(f"Username {username!r}: {' '.join(exc.messages)}", code="username_invalid") from exc
    return username


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
    """The text as stored: surrounding whitespace removed, not empty, within the limit, without
    NUL characters (PostgreSQL's text cannot hold them)."""
    cleaned = text.strip()
    if not cleaned:
        raise errors.ApplicationError(errors.TEXT_EMPTY, code="text_empty")
    if "\x00" in cleaned:
        raise errors.ApplicationError(errors.TEXT_NUL, code="text_nul")
    if len(cleaned) > settings.MESSAGE_MAX_CHARS:
        raise errors.ApplicationError(
            errors.TEXT_TOO_LONG.format(length=len(cleaned), limit=settings.MESSAGE_MAX_CHARS), code="text_too_long"
        )
    return cleaned


def _agent_for_new_conversation() -> AgentProfile | None:
    """The available agent with the fewest open conversations: each agent's open ones counted
    through the index of open conversations by assignee (a join counted every conversation an
    agent was ever given, closed ones included, at every new conversation)."""
    open_ones = (
        Conversation.objects.filter(assignee=OuterRef("pk"), status=ConversationStatus.OPEN)
        .order_by().values("assignee").annotate(count=Count("*")).values("count")
    )
    return (
        AgentProfile.objects.filter(is_available=True, user__is_active=True)
        .annotate(open_count=Coalesce(Subquery(open_ones), 0))
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
    if external_id:  # the client's own customer: two requests at once share one (get_or_create reads it again)
        customer, _ = Customer.objects.get_or_create(
            api_client=api_client, external_id=external_id, defaults={"name": customer_name, "email": customer_email}
        )
    else:
        customer = Customer.objects.create(api_client=api_client, name=customer_name, email=customer_email)
    assignee = _agent_for_new_conversation()
    return Conversation.objects.create(
        customer=customer, assignee=assignee, team=assignee.team if assignee else None,
        language=language or "", subject=subject,
    )


def _readers(conversation: Conversation) -> list[AgentProfile]:
    """The agents who may open the conversation (as ``selectors.conversations_visible_to``):
    its team's and its assignee; every agent when it has no team."""
    agents = AgentProfile.objects.filter(user__is_active=True)
    if conversation.team_id:
        agents = agents.filter(team=conversation.team_id)
    readers = list(agents)
    if conversation.assignee_id and all(agent.pk != conversation.assignee_id for agent in readers):
        readers.append(conversation.assignee)
    return readers


def inbound_targets(*, conversation: Conversation, language: str) -> list[str]:
    """The languages a customer message in ``language`` is translated into on arrival: one per
    distinct working language of the agents who may read it and need it translated (not per
    agent); DEFAULT_AGENT_LANGUAGE while there is no such agent at all."""
    readers = _readers(conversation)
    if not readers:
        targets = {settings.DEFAULT_AGENT_LANGUAGE}
    else:
        targets = {agent.working_language for agent in readers if agent.needs_translation(language)}
    targets.discard(language)
    return sorted(targets)


def _touch(conversation: Conversation, *, customer: bool, fields: tuple[str, ...] = ()) -> None:
    now = timezone.now()
    conversation.last_message_at = now
    changed = ["last_message_at", "updated_at", *fields]
    if customer:
        conversation.last_customer_message_at = now
        changed.append("last_customer_message_at")
    conversation.save(update_fields=changed)


@transaction.atomic
def message_create_from_customer(*, conversation: Conversation, text: str, language: str | None = None) -> Message:
    """Store a customer message and request its translation into the agent's language."""
    text = text_validate(text)
    # Locked: the status and language written below must not undo a concurrent change.
    conversation = Conversation.objects.select_for_update(of=("self",)).select_related("assignee").get(pk=conversation.pk)
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
        detected_language=language if source == LanguageSource.DETECTED else "", delivered_at=timezone.now(),
    )
    if not conversation.language:
        conversation.language = language
    if conversation.status == ConversationStatus.PENDING:
        conversation.status = ConversationStatus.OPEN  # the customer answered
    _touch(conversation, customer=True, fields=("language", "status"))
    for target in inbound_targets(conversation=conversation, language=language):
        translation_request(message=message, target_language=target)
    return message


@transaction.atomic
def message_create_from_agent(*, conversation: Conversation, agent: AgentProfile, text: str) -> Message:
    """Store an agent's reply (in the agent's language) and request it in the customer's language."""
    text = text_validate(text)
    # Locked and read again: a close or a reassignment made since the caller read it stands.
    conversation = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
    _check_open(conversation)
    target = conversation.language or settings.DEFAULT_AGENT_LANGUAGE
    message = Message.objects.create(
        conversation=conversation, sender=Sender.AGENT, author=agent, text=text,
        language=agent.working_language, language_source=LanguageSource.AGENT, delivered_at=timezone.now(),
        delivered_language=target,
    )
    if conversation.assignee_id is None:
        conversation.assignee = agent
    conversation.status = ConversationStatus.PENDING  # answered: waiting for the customer
    _touch(conversation, customer=False, fields=("assignee", "status"))
    if target != message.language:
        translation_request(message=message, target_language=target)
    return message


# --- The agent workspace ---------------------------------------------------------------------

NOT_YOUR_TEAM = "Conversation {id} belongs to another team."
NOT_A_DRAFT = "Message {id} was already sent."
ONLY_CUSTOMER_MESSAGES = "Only a customer message's language can be corrected."
DRAFT_NOT_READY = "The reply's translation into '{language}' is {status}: send it once it is done (or retry it)."
DRAFT_RETRANSLATED = "The customer's language is now '{language}': the reply is being translated into it; send it once ready."


def _check_open(conversation: Conversation) -> None:
    if conversation.status == ConversationStatus.CLOSED:
        raise errors.ApplicationError(errors.CONVERSATION_CLOSED.format(id=conversation.pk), code="conversation_closed")


@transaction.atomic
def reply_draft_create(*, conversation: Conversation, agent: AgentProfile, text: str) -> Message:
    """An agent's reply, written in their working language, kept as a draft: its translation into
    the customer's language is requested now, and its back-translation once that is done, so the
    agent can check and correct it before sending."""
    text = text_validate(text)
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)  # its language now
    _check_open(conversation)
    message = Message.objects.create(
        conversation=conversation, sender=Sender.AGENT, author=agent, text=text,
        language=agent.working_language, language_source=LanguageSource.AGENT,
    )
    if conversation.assignee_id is None:
        conversation.assignee = agent
        conversation.save(update_fields=["assignee", "updated_at"])
    target = conversation.language or settings.DEFAULT_AGENT_LANGUAGE
    if target != message.language:
        translation_request(message=message, target_language=target, back_translate=True)
    return message


@transaction.atomic
def reply_correct(*, message: Message, agent: AgentProfile, text: str):
    """Store the agent's correction of a draft's translation beside the machine output, and
    translate the correction back for them."""
    from translation.services import back_translation_request

    text = text_validate(text)
    message = Message.objects.select_for_update().get(pk=message.pk)  # not sent meanwhile
    if message.delivered_at is not None:
        raise errors.ApplicationError(NOT_A_DRAFT.format(id=message.pk), code="already_sent")
    translation = message.translations.select_for_update().first()
    if translation is None:
        raise errors.ApplicationError(f"Message {message.pk} has no translation to correct.", code="no_translation")
    translation.corrected_text, translation.corrected_by, translation.corrected_at = text, agent, timezone.now()
    translation.save(update_fields=["corrected_text", "corrected_by", "corrected_at", "updated_at"])
    translation.back_translations.all().delete()
    back_translation_request(of=translation, text=text)
    return translation


def _draft_not_translated(message: Message, conversation: Conversation) -> str:
    """Why the draft cannot go out yet, or "": it goes out only in the customer's current
    language, once its translation is done. A draft with no translation into that language (the
    customer's language was corrected after it was written) gets one now."""
    from translation.models import TranslationStatus

    target = conversation.language or settings.DEFAULT_AGENT_LANGUAGE
    if target == message.language:
        return ""
    translation = message.translations.filter(target_language=target).first()
    if translation is None:
        message.translations.all().delete()
        translation_request(message=message, target_language=target, back_translate=True)
        return DRAFT_RETRANSLATED.format(language=target)
    if translation.status != TranslationStatus.DONE:
        return DRAFT_NOT_READY.format(language=target, status=translation.get_status_display())
    return ""


def reply_send(*, message: Message, agent: AgentProfile) -> Message:
    """Deliver a draft: from now on the customer sees it (its corrected translation, if any)."""
    with transaction.atomic():  # committed even when the draft cannot go out (a new translation)
        message = Message.objects.select_for_update().get(pk=message.pk)
        if message.delivered_at is not None:
            raise errors.ApplicationError(NOT_A_DRAFT.format(id=message.pk), code="already_sent")
        conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
        _check_open(conversation)
        problem = _draft_not_translated(message, conversation)
        if not problem:
            message.delivered_at = timezone.now()
            # What the customer reads from now on, whatever is learned of their language later.
            message.delivered_language = conversation.language or settings.DEFAULT_AGENT_LANGUAGE
            message.save(update_fields=["delivered_at", "delivered_language", "updated_at"])
            conversation.status = ConversationStatus.PENDING  # waiting for the customer
            _touch(conversation, customer=False, fields=("status",))
    if problem:
        raise errors.ApplicationError(problem, code="translation_not_ready")
    return message


@transaction.atomic
def message_language_override(*, message: Message, agent: AgentProfile, language: str) -> Message:
    """An agent says which language a customer message is really in: it is translated again,
    from that language, into the same targets (the detection's answer is kept)."""
    from translation.models import Translation

    language = language_validate(language, supported_only=False)
    if message.sender != Sender.CUSTOMER:
        raise errors.ApplicationError(ONLY_CUSTOMER_MESSAGES, code="not_a_customer_message")
    if message.language == language:
        return message
    if message.language_source == LanguageSource.DETECTED and not message.detected_language:
        message.detected_language = message.language
    message.language, message.language_source = language, LanguageSource.OVERRIDE
    message.save(update_fields=["language", "language_source", "detected_language", "updated_at"])
    conversation = message.conversation
    if conversation.language and conversation.messages.filter(sender=Sender.CUSTOMER).count() == 1:
        conversation.language = language  # the first message set it: correct it too
        conversation.save(update_fields=["language", "updated_at"])
        for draft in conversation.messages.filter(sender=Sender.AGENT, delivered_at__isnull=True):
            Translation.objects.filter(message=draft).delete()  # drafts follow the customer's language
            if draft.language != language:
                translation_request(message=draft, target_language=language, back_translate=True)
    Translation.objects.filter(message=message).delete()
    for target in inbound_targets(conversation=conversation, language=language):
        translation_request(message=message, target_language=target)
    return message


def agent_update_languages(
    *, agent: AgentProfile, working_language: str, native_languages: list[str], translation_enabled: bool
) -> AgentProfile:
    """An agent's own languages. Messages already translated stay as they are; the next ones
    follow (an older message can be translated on demand from the conversation)."""
    agent.working_language = language_validate(working_language, supported_only=False)
    agent.native_languages = sorted({language_validate(code, supported_only=False) for code in native_languages})
    agent.translation_enabled = translation_enabled
    agent.save(update_fields=["working_language", "native_languages", "translation_enabled"])
    return agent


@transaction.atomic
def conversation_take(*, conversation: Conversation, agent: AgentProfile) -> Conversation:
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    conversation.assignee = agent
    if conversation.team_id is None and agent.team_id is not None:
        conversation.team = agent.team
    if conversation.status == ConversationStatus.CLOSED:
        conversation.status = ConversationStatus.OPEN
    conversation.save(update_fields=["assignee", "team", "status", "updated_at"])
    return conversation


def conversation_assign(*, conversation: Conversation, assignee: AgentProfile) -> Conversation:
    if conversation.team_id and assignee.team_id != conversation.team_id:
        raise errors.ApplicationError(
            f"{assignee.user.get_username()} is not in the team of conversation {conversation.pk}.", code="wrong_team"
        )
    conversation.assignee = assignee
    conversation.save(update_fields=["assignee", "updated_at"])
    return conversation


def conversation_set_status(*, conversation: Conversation, status: str) -> Conversation:
    if status not in ConversationStatus.values:
        raise errors.ApplicationError(
            f"Unknown status '{status}': use one of {', '.join(ConversationStatus.values)}.", code="bad_status"
        )
    conversation.status = status
    conversation.save(update_fields=["status", "updated_at"])
    return conversation


def conversation_mark_read(*, conversation: Conversation, agent: AgentProfile) -> None:
    ConversationRead.objects.update_or_create(
        agent=agent, conversation=conversation, defaults={"read_at": timezone.now()}
    )


def team_create(*, name: str) -> Team:
    name = name.strip()
    if not name:
        raise errors.ApplicationError("A team needs a name.", code="team_name_empty")
    return Team.objects.get_or_create(name=name)[0]
