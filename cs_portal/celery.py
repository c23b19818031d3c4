"""The project's Celery app; its configuration lives in Django settings (``CELERY_*``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cs_portal.settings")

app = Celery("cs_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The workers' own inspect commands (``celery -A cs_portal inspect models``) must be known to
# every client of this app, not only to the workers that answer them.
import workers.control  # noqa: E402, F401
