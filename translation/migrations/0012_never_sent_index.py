"""An index of the queued rows never sent (the broker was down at their commit), for the
reconciler's look, which ran every few seconds in every worker and walked every queued row to
find them. Rows are stamped as sent when saved: the index holds only those whose send failed."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('portal', '0003_conversation_updated_index'),
        ('translation', '0011_drop_indexes_covered_by_others'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='translation',
            index=models.Index(condition=models.Q(('enqueued_at__isnull', True), ('status', 1)), fields=['created_at'], name='translation_never_sent'),
        ),
    ]
