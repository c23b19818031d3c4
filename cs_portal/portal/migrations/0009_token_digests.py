import hashlib

from django.db import migrations


def digest(key: str) -> str:
    """portal.tokens.token_digest, as of this migration."""
    return hashlib.blake2b(key.encode(), digest_size=20).hexdigest()


def keys_to_digests(apps, schema_editor):
    """DRF kept each agent's key itself; the portal keeps its digest (portal/tokens.py). Every
    key given out before goes on working: the agent API looks a presented key up by its digest.
    The key is the row's primary key, so each row is made again (with its creation time)."""
    Token = apps.get_model("authtoken", "Token")
    rows = list(Token.objects.values_list("key", "user_id", "created"))
    Token.objects.all().delete()
    Token.objects.bulk_create(Token(key=digest(key), user_id=user, created=created) for key, user, created in rows)
    for key, _user, created in rows:  # auto_now_add set it anew
        Token.objects.filter(key=digest(key)).update(created=created)
    # Entries of the admin's history about a token object named by its key (DRF's old Token page).
    ContentType = apps.get_model("contenttypes", "ContentType")
    LogEntry = apps.get_model("admin", "LogEntry")
    for entry in LogEntry.objects.filter(content_type__in=ContentType.objects.filter(app_label="authtoken", model="token")):
        if len(entry.object_id) == 40:
            LogEntry.objects.filter(pk=entry.pk).update(object_id=digest(entry.object_id))


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0008_every_team_permission"),
        ("authtoken", "0004_alter_tokenproxy_options"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        # Not reversible: a digest cannot be turned back into its key (the keys would have to be
        # made anew).
        migrations.RunPython(keys_to_digests),
    ]
