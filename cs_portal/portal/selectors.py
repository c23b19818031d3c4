"""Reads of the support portal."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.utils import timezone

from cs_portal.portal.models import EVERY_TEAM_PERMISSION, AgentProfile, ApiClient, Conversation, Message
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


def conversations_visible_to(agent: AgentProfile) -> QuerySet[Conversation]:
    """An agent sees their team's conversations, those without a team, and those assigned to
    them; an agent with the every-team permission (a supervisor, a superuser) sees all. Being
    staff (allowed into the admin) is not enough."""
    conversations = Conversation.objects.all()
    if agent.user.has_perm(EVERY_TEAM_PERMISSION):
        return conversations
    mine = Q(team__isnull=True) | Q(assignee=agent)
    if agent.team_id:
        mine |= Q(team=agent.team_id)
    return conversations.filter(mine)


def conversation_get_for_agent(*, agent: AgentProfile, conversation_id: int) -> Conversation:
    conversation = (
        conversations_visible_to(agent).select_related("customer", "assignee__user", "team").filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise errors.NotFound(errors.CONVERSATION_NOT_FOUND.format(id=conversation_id), code="conversation_not_found")
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.prefetch_related(
        Prefetch("translations", queryset=Translation.objects.order_by("target_language"))
    ).select_related("author__user")


def messages_delivered_page(
    *, conversation: Conversation, limit: int, before: int | None = None
) -> tuple[list[Message], bool]:
    """The conversation's messages as its customer sees them (no drafts), a page at a time: the
    latest ``limit`` delivered before the message ``before`` (or the latest of all), in the order
    they were delivered, and whether earlier ones are left. Read off ``message_latest_delivered``."""
    messages = message_list(conversation=conversation).filter(delivered_at__isnull=False)
    if before is not None:
        cursor = (
            conversation.messages.filter(pk=before, delivered_at__isnull=False).values_list("delivered_at", flat=True).first()
        )
        if cursor is None:
            raise errors.ApplicationError(
                f"Message {before} is not a delivered message of conversation {conversation.pk}: "
                "`before` takes the id of a message the list returned.",
                code="before_unknown",
            )
        # (delivered_at, id) before the cursor's; the first term bounds the index's range scan.
        messages = messages.filter(Q(delivered_at__lte=cursor), Q(delivered_at__lt=cursor) | Q(pk__lt=before))
    page = list(messages.order_by("-delivered_at", "-id")[: limit + 1])
    return page[:limit][::-1], len(page) > limit


def inbox(
    *, agent: AgentProfile, status: str = "", language: str = "", assignee: str = "", query: str = ""
) -> QuerySet[Conversation]:
    """The agent's inbox, newest activity first, each conversation with ``unread`` (a customer
    message after the agent last opened it) and ``last_message`` (the latest delivered text).

    ``assignee``: "me", "none", or an agent id.
    """
    from cs_portal.portal.models import ConversationRead

    conversations = conversations_visible_to(agent).select_related("customer", "assignee__user", "team")
    if status:
        conversations = conversations.filter(status=status)
    if language:
        conversations = conversations.filter(language=language)
    if assignee == "me":
        conversations = conversations.filter(assignee=agent)
    elif assignee == "none":
        conversations = conversations.filter(assignee__isnull=True)
    elif assignee.isdigit():
        conversations = conversations.filter(assignee_id=int(assignee))
    if query:
        conversations = conversations.filter(
            Q(customer__name__icontains=query) | Q(customer__email__icontains=query)
            | Q(pk__in=Message.objects.filter(text__icontains=query).values("conversation_id"))
        )
    read_after = ConversationRead.objects.filter(
        agent=agent, conversation=OuterRef("pk"), read_at__gte=OuterRef("last_customer_message_at")
    )
    latest = Message.objects.filter(conversation=OuterRef("pk"), delivered_at__isnull=False).order_by("-delivered_at", "-id")
    return conversations.annotate(
        unread=Q(last_customer_message_at__isnull=False) & ~Exists(read_after),
        last_message=Subquery(latest.values("text")[:1]),
        last_sender=Subquery(latest.values("sender")[:1]),
    ).order_by(F("last_message_at").desc(nulls_last=True), "-id")
