from django.db import migrations


def keys_out_of_the_log(apps, schema_editor):
    """The admin's history named a token by its key (the key is a password): those entries name
    the token's kind now. New ones name the agent (``AgentToken``)."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    LogEntry = apps.get_model("admin", "LogEntry")
    kinds = ContentType.objects.filter(app_label="authtoken", model__in=["token", "tokenproxy"])
    LogEntry.objects.filter(content_type__in=kinds).update(object_repr="API token")


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0006_agent_token"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(keys_out_of_the_log, migrations.RunPython.noop),
    ]
