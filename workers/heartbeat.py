"""The worker's heartbeat in the database (``WorkerHeartbeat``): registered at start, ready once
the models are warm, beaten by the device loop, marked stopped at the end.

Writes are best effort: a database that is down must not stop the loop (it then goes stale,
which is the truth: this worker cannot store results)."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

from django.db import close_old_connections
from django.utils import timezone

from workers.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
FORGET_AFTER = timedelta(days=1)


class Heartbeat:
    def __init__(self, name: str, *, device: str, queues: list[str], consumer_clock=None) -> None:
        self.name, self.device, self.queues = name, device, queues
        self._last_write = 0.0
        self._busy_since = None  # as last written
        self._ready, self._models_ready, self._models = False, False, []
        self._consumer_clock = consumer_clock
        self._consumer_wedged = False

    def _consumer_turns(self) -> bool:
        """False while the Celery consumer's loop has stood still for longer than a worker may
        stay silent: then no beat is written, and the worker goes stale (the truth: no job can
        reach it). Said once as its last error; beats resume when the consumer turns again."""
        if self._consumer_clock is None:
            return True
        from django.conf import settings

        wedged = self._consumer_clock.stalled_for() > settings.WORKER_HEARTBEAT_STALE_S / 2
        if wedged and not self._consumer_wedged:
            logger.error("The Celery consumer of %s stopped turning; heartbeats stop until it turns", self.name)
            self.error("The Celery consumer stopped turning (wedged): no job can reach this worker.")
        self._consumer_wedged = wedged
        return not wedged

    def _write(self, **fields) -> None:
        try:
            if not WorkerHeartbeat.objects.filter(name=self.name).update(**fields):
                self.register()  # the row was removed (a cleanup, a restored database): write it again
                WorkerHeartbeat.objects.filter(name=self.name).update(**fields)
            self._last_write = time.monotonic()
        except Exception:
            logger.warning("Could not write the heartbeat of %s", self.name, exc_info=True)
            close_old_connections()

    def register(self) -> None:
        now = timezone.now()
        # Housekeeping: workers gone for a day (stopped, or killed and silent) leave the list.
        WorkerHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).exclude(name=self.name).delete()
        WorkerHeartbeat.objects.update_or_create(
            name=self.name,
            defaults={
                "hostname": socket.gethostname(), "pid": os.getpid(), "device": self.device, "queues": self.queues,
                "loaded_models": self._models, "started_at": now, "beat_at": now, "busy_since": None,
                "ready": self._ready, "stopped_at": None,
            },
        )

    def ready(self, models: list[dict]) -> None:
        """The models are loaded and each has translated its warm-up sentence (the canary).
        The worker is ready once its consumer also turns (it connected to the broker)."""
        self._models_ready, self._models = True, list(models)
        self._write(loaded_models=self._models, beat_at=timezone.now())
        self._ready_when_consuming()

    def _ready_when_consuming(self) -> None:
        consuming = self._consumer_clock is None or self._consumer_clock.started
        if self._models_ready and consuming and not self._ready:
            self._ready = True
            self._write(ready=True, beat_at=timezone.now())

    def idle(self) -> None:
        """The loop waited for jobs: beat (about every second), no longer busy."""
        if not self._consumer_turns():
            return
        self._ready_when_consuming()
        if self._busy_since is not None or time.monotonic() - self._last_write >= BEAT_EVERY_S:
            self._busy_since = None
            self._write(beat_at=timezone.now(), busy_since=None)

    def batch_started(self) -> None:
        """A batch starts: alive for as long as the engine call may take. Written once per busy
        stretch, not per batch: under load the row changes about once a second."""
        if self._busy_since is None:
            self._busy_since = timezone.now()
            self._write(beat_at=self._busy_since, busy_since=self._busy_since)

    def batch_ended(self) -> None:
        if not self._consumer_turns():
            return
        if time.monotonic() - self._last_write >= BEAT_EVERY_S:
            self._busy_since = None
            self._write(beat_at=timezone.now(), busy_since=None)

    def error(self, text: str) -> None:
        self._write(last_error=text[:2000], last_error_at=timezone.now())

    def stopped(self) -> None:
        self._ready = False
        self._write(stopped_at=timezone.now(), ready=False, busy_since=None)
