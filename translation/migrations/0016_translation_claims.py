from django.db import migrations, models


class Migration(migrations.Migration):
    """A claim's token of its own: the attempts can be given back, so a superseded claim could
    carry the same attempt as the latest one."""

    dependencies = [
        ("translation", "0015_translation_runs_alone"),
    ]

    operations = [
        migrations.AddField(
            model_name="translation",
            name="claims",
            field=models.PositiveIntegerField(
                default=0, db_default=0, editable=False,
                help_text=(
                    "Times a worker claimed the job: the latest claim's token. Unlike the attempts it is never given "
                    "back, so a superseded claim (a batch that never started, a worker taken over) cannot pass for "
                    "the latest one."
                ),
            ),
        ),
    ]
