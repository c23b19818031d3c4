"""The project's Celery app; its configuration lives in Django settings (``CELERY_*``)."""

import os

from celery import Celery

from cs_portal import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cs_portal.settings")
broker.register()  # Redis: one client per channel (cs_portal/broker.py)

app = Celery("cs_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The workers' own inspect commands (``celery -A cs_portal inspect models``) must be known to
# every client of this app, not only to the workers that answer them.
import workers.control  # noqa: E402, F401


@app.on_after_finalize.connect
def declare_route_queues(sender, **kwargs) -> None:
    """Name the queues of the enabled routes in ``task_queues``.

    Flower lists a broker's queues from the workers it has inspected, else from ``task_queues``;
    declaring them shows the per-language queues before a worker reports. Best effort: a
    database that is not there yet (before migrations) leaves the list as it is.
    """
    from kombu import Exchange, Queue

    try:
        from translation.routing import routes

        names = sorted({route.queue for route in routes() if route.enabled})
    except Exception:  # no database yet, or Django not set up in this process
        return
    # The same shape Celery gives a queue it creates on demand: a direct exchange of its name.
    sender.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names]
