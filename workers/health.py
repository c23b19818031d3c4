"""Readiness as ops need it: the database and the broker answer, and every enabled route's queue
has at least one worker that is ready (models warm, canary done) and alive (its loop beats, or
its batch has not outlasted the engine's call timeout)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

logger = logging.getLogger(__name__)


@dataclass
class Readiness:
    ready: bool = True
    checks: dict = field(default_factory=dict)

    def fail(self, name: str, reason: str) -> None:
        self.ready = False
        self.checks[name] = reason


def database_readiness(*, detail: bool = True) -> Readiness:
    """The database answers (the web process's own readiness). Without ``detail`` the reason
    names the error's kind only (an open probe: a driver's message names the server and its
    user); the whole error goes to the log."""
    result = Readiness()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        result.checks["database"] = "ok"
    except Exception as exc:
        logger.warning("Readiness: the database does not answer: %s: %s", type(exc).__name__, exc)
        result.fail("database", f"unreachable: {type(exc).__name__}" + (f": {exc}" if detail else ""))
    return result


def readiness() -> Readiness:
    from cs_portal.celery import app
    from translation.routing import routes
    from workers.models import WorkerHeartbeat

    result = database_readiness()
    if not result.ready:
        return result  # nothing else can be read
    try:
        with app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1, interval_start=0, timeout=2)  # a new connection each call
        result.checks["broker"] = "ok"
    except Exception as exc:
        result.fail("broker", f"unreachable: {type(exc).__name__}: {exc}")
    now = timezone.now()
    workers = [beat for beat in WorkerHeartbeat.objects.filter(stopped_at__isnull=True) if beat.is_ready(now)]
    queues = sorted({route.queue for route in routes() if route.enabled})
    served = {queue: sorted(w.name for w in workers if queue in w.queues) for queue in queues}
    result.checks["queues"] = served
    unserved = [queue for queue, names in served.items() if not names]
    if unserved:
        result.fail("unserved_queues", unserved)
    return result
