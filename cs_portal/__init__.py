# Re-exported so that ``shared_task`` binds to this project's Celery app.
from cs_portal.celery import app as celery_app

__all__ = ("celery_app",)
