"""Input validation and output shapes of the JSON API."""

from __future__ import annotations

from rest_framework import serializers

from cs_portal.portal.models import Conversation, Message, Sender
from translation.models import Translation, TranslationStatus


class CustomerInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField(required=False, default="")
    external_id = serializers.CharField(max_length=200, required=False, default="")


class ConversationInput(serializers.Serializer):
    customer = CustomerInput()
    language = serializers.CharField(required=False, help_text="ISO 639-1 code of the customer's language.")
    subject = serializers.CharField(max_length=200, required=False, default="")


class MessageInput(serializers.Serializer):
    # Blank and whitespace-only texts reach the service, which answers with its own message.
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    language = serializers.CharField(
        required=False, help_text="ISO 639-1 code; detected from the text when absent."
    )


class AgentMessageInput(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)


class TranslationOutput(serializers.ModelSerializer):
    """A translation as the customer channel sees it; which model, queue and worker served it,
    and why one failed, are for the ledger (admin), not for customers."""

    status = serializers.CharField(source="get_status_display")
    text = serializers.CharField(source="final_text", help_text="The agent's correction when there is one.")

    class Meta:
        model = Translation
        fields = ["id", "source_language", "target_language", "status", "text", "created_at", "finished_at"]


class CustomerOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    email = serializers.CharField()
    external_id = serializers.CharField()


class ConversationOutput(serializers.ModelSerializer):
    customer = CustomerOutput()

    class Meta:
        model = Conversation
        fields = ["id", "status", "language", "subject", "customer", "created_at", "updated_at"]


class CustomerMessageOutput(serializers.ModelSerializer):
    """A message as the customer sees it: agent replies in the customer's language.

    ``text`` is what the customer reads: their own text, or the translation of the agent's
    reply once it is done (null while ``delivery`` is pending or failed).
    """

    text = serializers.SerializerMethodField()
    language = serializers.SerializerMethodField()
    delivery = serializers.SerializerMethodField()
    original_text = serializers.CharField(source="text")
    original_language = serializers.CharField(source="language")
    translations = TranslationOutput(many=True)

    class Meta:
        model = Message
        fields = [
            "id", "sender", "text", "language", "delivery", "original_text", "original_language",
            "language_source", "detection_confidence", "created_at", "translations",
        ]

    def _customer_translation(self, message: Message) -> Translation | None:
        target = message.conversation.language
        return next((t for t in message.translations.all() if t.target_language == target), None)

    def _is_direct(self, message: Message) -> bool:
        """Shown as written: the customer's own messages, and replies that needed no translation
        (in the customer's language, or sent before it was known: no translation was requested;
        one that needed it always has a row, failed ones included)."""
        if message.sender == Sender.CUSTOMER:
            return True
        conversation_language = message.conversation.language
        return not conversation_language or message.language == conversation_language or not message.translations.all()

    def get_text(self, message: Message) -> str | None:
        if self._is_direct(message):
            return message.text
        translation = self._customer_translation(message)
        # An agent's correction, when there is one, is what the customer reads.
        return translation.final_text if translation and translation.status == TranslationStatus.DONE else None

    def get_language(self, message: Message) -> str:
        return message.language if self._is_direct(message) else message.conversation.language

    def get_delivery(self, message: Message) -> str:
        if self._is_direct(message):
            return "delivered"
        translation = self._customer_translation(message)
        if translation is None or translation.status == TranslationStatus.FAILED:
            return "failed"
        return "delivered" if translation.status == TranslationStatus.DONE else "pending"
