"""Input validation and output shapes of the JSON API."""

from __future__ import annotations

from rest_framework import serializers

from cs_portal.portal.models import Conversation, Message, Sender
from translation.models import Translation, TranslationStatus


# Optional fields may also come empty (or, for a language, null): a client that sends every field
# of its form, known or not, is taken as one that left them out.
class CustomerInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField(max_length=254, required=False, default="", allow_blank=True)  # the column's length
    external_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


class OptionalLanguage(serializers.CharField):
    """An ISO 639-1 code that may be left out, empty or null, each meaning "not given" (None)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(required=False, allow_blank=True, allow_null=True, **kwargs)

    def run_validation(self, data=serializers.empty):
        return super().run_validation(data) or None


class ConversationInput(serializers.Serializer):
    customer = CustomerInput()
    language = OptionalLanguage(help_text="ISO 639-1 code of the customer's language.")
    subject = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


class MessageInput(serializers.Serializer):
    # Blank and whitespace-only texts reach the service, which answers with its own message.
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    language = OptionalLanguage(help_text="ISO 639-1 code; detected from the text when absent.")


# A page of a conversation's messages: the latest 100 unless asked for more (at most 500).
MESSAGE_PAGE_DEFAULT = 100
MESSAGE_PAGE_MAX = 500


class MessagePageQuery(serializers.Serializer):
    limit = serializers.IntegerField(
        min_value=1, max_value=MESSAGE_PAGE_MAX, default=MESSAGE_PAGE_DEFAULT,
        help_text=f"How many messages, the latest first chosen (default {MESSAGE_PAGE_DEFAULT}, at most {MESSAGE_PAGE_MAX}).",
    )
    before = serializers.IntegerField(
        min_value=1, required=False,
        help_text="A message id: the page ends just before that message (the `Link: rel=\"prev\"` header gives it).",
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

    @staticmethod
    def _read_in(message: Message) -> str:
        """The language the customer reads the message in: their own message's; an agent's reply
        in the one it was sent in (``delivered_language``), which a language learned or corrected
        later does not change."""
        if message.sender == Sender.CUSTOMER:
            return message.language
        return message.delivered_language or message.conversation.language or message.language

    def _customer_translation(self, message: Message) -> Translation | None:
        target = self._read_in(message)
        return next((t for t in message.translations.all() if t.target_language == target), None)

    def _is_direct(self, message: Message) -> bool:
        """Shown as written: the customer's own messages, and replies sent in the language they
        were written in."""
        return message.sender == Sender.CUSTOMER or self._read_in(message) == message.language

    def get_text(self, message: Message) -> str | None:
        if self._is_direct(message):
            return message.text
        translation = self._customer_translation(message)
        # An agent's correction, when there is one, is what the customer reads.
        return translation.final_text if translation and translation.status == TranslationStatus.DONE else None

    def get_language(self, message: Message) -> str:
        return self._read_in(message)

    def get_delivery(self, message: Message) -> str:
        if self._is_direct(message):
            return "delivered"
        translation = self._customer_translation(message)
        if translation is None or translation.status == TranslationStatus.FAILED:
            return "failed"
        return "delivered" if translation.status == TranslationStatus.DONE else "pending"
