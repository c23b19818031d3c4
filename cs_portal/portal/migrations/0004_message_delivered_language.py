from django.db import migrations, models
from django.db.models import Exists, OuterRef, Q, Subquery


def delivered_languages(apps, schema_editor):
    """The replies sent before this field: the language they have been shown to the customer in,
    in two statements (a row at a time would hold the table's lock for as long as the rows take).
    Its translation into the conversation's language when there is one, else as written."""
    Message = apps.get_model("portal", "Message")
    Conversation = apps.get_model("portal", "Conversation")
    Translation = apps.get_model("translation", "Translation")
    replies = Message.objects.filter(sender="agent", delivered_at__isnull=False)
    replies.update(delivered_language=models.F("language"))
    language = Conversation.objects.filter(pk=OuterRef("conversation_id")).values("language")[:1]
    translated = Translation.objects.filter(message_id=OuterRef("pk"), target_language=OuterRef("conversation__language"))
    (replies.exclude(Q(conversation__language="") | Q(conversation__language=models.F("language")))
     .filter(Exists(translated)).update(delivered_language=Subquery(language)))


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
                blank=True, default="", db_default="", max_length=8,
                help_text=(
                    "An agent's reply: the language the customer reads it in, fixed when it was sent (its own language: "
                    "as written; another: its translation into it). Empty for a customer's message and a draft."
                ),
            ),
        ),
        migrations.RunPython(delivered_languages, migrations.RunPython.noop),
    ]
