from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("translation", "0014_forward_time"),
    ]

    operations = [
        migrations.AddField(
            model_name="translation",
            name="runs_alone",
            field=models.BooleanField(
                default=False, db_default=False,
                help_text=(
                    "A forward pass it shared stopped the engine process (a crash, a hang): it runs in a pass of its "
                    "own from then on, so an input that stops the engine fails alone and its neighbours are stored."
                ),
            ),
        ),
    ]
