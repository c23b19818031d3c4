"""Customers, their conversations and messages, agents, and the API clients of the customer channel."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

from translation.languages import LANGUAGES

LANGUAGE_CHOICES = [(code, f"{lang.name} ({code})") for code, lang in LANGUAGES.items()]


class AgentProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent")
    working_language = models.CharField(max_length=8, choices=LANGUAGE_CHOICES, default="en")
    is_available = models.BooleanField(default=True, help_text="Receives new conversations.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user.get_username()} ({self.working_language})"


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
    # The customer's language: set by the client or by the first message's detection.
    language = models.CharField(max_length=8, blank=True, default="", choices=LANGUAGE_CHOICES)
    status = models.CharField(max_length=10, choices=ConversationStatus.choices, default=ConversationStatus.OPEN)
    subject = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

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


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    sender = models.CharField(max_length=10, choices=Sender.choices)
    author = models.ForeignKey(AgentProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    text = models.TextField()
    language = models.CharField(max_length=8, choices=LANGUAGE_CHOICES)
    language_source = models.CharField(max_length=12, choices=LanguageSource.choices)
    detection_confidence = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.sender} message {self.pk} ({self.language})"
