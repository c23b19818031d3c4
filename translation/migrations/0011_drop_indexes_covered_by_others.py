"""Drop the foreign keys' own indexes on message and route: the unique (message, target_language)
constraint's index and translation_route_recent (route, created_at) lead with those columns, and
every index is written at each insert, claim and store of a row. Only the indexes go: the foreign
key constraints stay as they are (Django's AlterField would drop and re-add them, checking every
row of the ledger again)."""

import django.db.models.deletion
from django.db import migrations, models

INDEXES = {  # Django's names for them, the same on PostgreSQL and SQLite
    "translation_translation_message_id_9573a392": "message_id",
    "translation_translation_route_id_24255391": "route_id",
}


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0003_conversation_updated_index"),
        ("translation", "0010_translation_retry_at"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {name}",
                    reverse_sql=f"CREATE INDEX IF NOT EXISTS {name} ON translation_translation ({column})",
                )
                for name, column in INDEXES.items()
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="translation",
                    name="message",
                    field=models.ForeignKey(blank=True, db_index=False, help_text="Empty for a sample sent from the route admin.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="translations", to="portal.message"),
                ),
                migrations.AlterField(
                    model_name="translation",
                    name="route",
                    field=models.ForeignKey(blank=True, db_index=False, help_text="The route chosen when the job was requested (after A/B choice and fallback).", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="translations", to="translation.languageroute"),
                ),
            ],
        ),
    ]
