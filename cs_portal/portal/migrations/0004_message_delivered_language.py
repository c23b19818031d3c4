from django.db import migrations, models


def delivered_languages(apps, schema_editor):
    """The replies sent before this field: the language the customer has been shown them in
    (as written when the conversation's language was unknown, the reply already in it, or no
    translation was requested; else its translation into the conversation's language)."""
    Message = apps.get_model("portal", "Message")
    Translation = apps.get_model("translation", "Translation")
    translated = set(Translation.objects.filter(message__sender="agent").values_list("message_id", flat=True).distinct())
    replies = Message.objects.filter(sender="agent", delivered_at__isnull=False).select_related("conversation")
    for message in replies.iterator(chunk_size=2000):
        language = message.conversation.language
        as_written = not language or message.language == language or message.pk not in translated
        message.delivered_language = message.language if as_written else language
        message.save(update_fields=["delivered_language"])


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0003_conversation_updated_index"),
        ("translation", "0010_translation_retry_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="delivered_language",
            field=models.CharField(
                blank=True, default="", max_length=8,
                help_text=(
                    "An agent's reply: the language the customer reads it in, fixed when it was sent (its own language: "
                    "as written; another: its translation into it). Empty for a customer's message and a draft."
                ),
            ),
        ),
        migrations.RunPython(delivered_languages, migrations.RunPython.noop),
    ]
