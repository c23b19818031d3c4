"""Customers, their conversations and messages, agents, and the API clients of the customer channel."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from rest_framework.authtoken.models import TokenProxy

from cs_portal.portal.indexes import NullsLastIndex
from translation.languages import LANGUAGES

LANGUAGE_CHOICES = [(code, f"{lang.name} ({code})") for code, lang in LANGUAGES.items()]

# Who sees every team's conversations (a supervisor, say): a permission given in the admin (users
# and groups), by ``create_agent --every-team``, or held by a superuser.
EVERY_TEAM_PERMISSION = "portal.view_every_team"


class Team(models.Model):
    """A group of agents sharing conversations: an agent sees only their team's."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AgentProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="agents")
    working_language = models.CharField(
        max_length=8, choices=LANGUAGE_CHOICES, default="en",
        help_text="Customer messages are translated into it; replies are written in it.",
    )
    native_languages = models.JSONField(
        default=list, blank=True, help_text="Languages read natively (ISO 639-1 codes): not translated for this agent."
    )
    translation_enabled = models.BooleanField(default=True, help_text="Off: the agent sees every message as written.")
    is_available = models.BooleanField(default=True, help_text="Receives new conversations.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user.get_username()} ({self.working_language})"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from translation.languages import is_known

        codes = self.native_languages
        if not isinstance(codes, list) or not all(isinstance(code, str) for code in codes):
            raise ValidationError({"native_languages": 'A list of ISO 639-1 codes, such as ["es", "pt"].'})
        unknown = [code for code in codes if not is_known(code)]
        if unknown:
            raise ValidationError({"native_languages": f"Unknown language codes: {', '.join(unknown)}."})

    def reads_natively(self, language: str) -> bool:
        return language == self.working_language or language in (self.native_languages or [])

    def needs_translation(self, language: str) -> bool:
        return self.translation_enabled and not self.reads_natively(language)


class ApiClient(models.Model):
    """A customer channel (web widget backend, e-mail bridge) calling the customer API.

    Only a hash of the key is stored; the key itself is shown once, when created.
    """

    name = models.CharField(max_length=100, unique=True)
    key_prefix = models.CharField(max_length=8, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(32)


class Customer(models.Model):
    api_client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="customers")
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True, default="")
    external_id = models.CharField(max_length=200, blank=True, default="", help_text="The channel's own id.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_client", "external_id"],
                condition=~models.Q(external_id=""),
                name="one_customer_per_external_id",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ConversationStatus(models.TextChoices):
    OPEN = "open"
    PENDING = "pending"
    CLOSED = "closed"


class Conversation(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="conversations")
    assignee = models.ForeignKey(AgentProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    # The customer's language: set by the client or by the first message's detection.
    language = models.CharField(max_length=8, blank=True, default="", choices=LANGUAGE_CHOICES)
    status = models.CharField(max_length=10, choices=ConversationStatus.choices, default=ConversationStatus.OPEN)
    subject = models.CharField(max_length=200, blank=True, default="")
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_customer_message_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The inbox's live stream asks for the latest change every quarter second.
            models.Index(fields=["updated_at"], name="conversation_updated"),
            # The inbox's order (newest activity first, never-written last): its first page is
            # read off this index instead of sorting every conversation an agent may see.
            NullsLastIndex(
                models.F("last_message_at").desc(nulls_last=True), models.F("id").desc(), name="conversation_inbox"
            ),
            # A new conversation goes to the agent with the fewest open ones: each agent's count.
            models.Index(fields=["assignee"], condition=models.Q(status="open"), name="conversation_open_by_assignee"),
        ]
        permissions = [
            # Supervisors: without it an agent sees their own team's conversations, those without a
            # team and those assigned to them, whatever the admin lets them do.
            (EVERY_TEAM_PERMISSION.split(".", 1)[1], "Can open every team's conversations in the workspace and agent API"),
        ]

    def __str__(self) -> str:
        return f"Conversation {self.pk} with {self.customer}"


class Sender(models.TextChoices):
    CUSTOMER = "customer"
    AGENT = "agent"


class LanguageSource(models.TextChoices):
    CLIENT = "client", "given by the client"
    DETECTED = "detected", "detected"
    CONVERSATION = "conversation", "conversation's language"
    AGENT = "agent", "agent's working language"
    OVERRIDE = "override", "set by an agent"


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    sender = models.CharField(max_length=10, choices=Sender.choices)
    author = models.ForeignKey(AgentProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    text = models.TextField()
    language = models.CharField(max_length=8, choices=LANGUAGE_CHOICES)
    language_source = models.CharField(max_length=12, choices=LanguageSource.choices)
    detection_confidence = models.FloatField(null=True, blank=True)
    detected_language = models.CharField(
        max_length=8, blank=True, default="", help_text="What detection said, kept when an agent overrides it."
    )
    # An agent's reply is a draft until sent: the customer sees it only from then on.
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivered_language = models.CharField(
        max_length=8, blank=True, default="", db_default="",  # a process of the release before writes messages too
        help_text=(
            "An agent's reply: the language the customer reads it in, fixed when it was sent (its own language: as "
            "written; another: its translation into it). Empty for a customer's message and a draft."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # A conversation's latest delivered message (the inbox's preview of every row): one
            # step down this index, not a sort of the conversation's messages.
            models.Index(
                "conversation", models.F("delivered_at").desc(), models.F("id").desc(),
                condition=models.Q(delivered_at__isnull=False), name="message_latest_delivered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sender} message {self.pk} ({self.language})"


class ConversationRead(models.Model):
    """When an agent last opened a conversation: newer customer messages are unread for them."""

    agent = models.ForeignKey(AgentProfile, on_delete=models.CASCADE, related_name="reads")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="reads")
    read_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "conversation"], name="one_read_mark_per_agent")]


class AgentToken(TokenProxy):
    """An agent's token for the agent API, as the admin lists it: named by its agent, never by
    the key itself (the key is a password; it is shown once, when made)."""

    class Meta:
        proxy = True
        verbose_name = "agent API token"

    def __str__(self) -> str:
        return f"API token of {self.user}"
