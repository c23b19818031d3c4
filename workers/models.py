"""What each worker says about itself: the heartbeat its batching loop writes."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models


class WorkerHeartbeat(models.Model):
    """One row per worker name. The worker's heartbeat thread writes ``beat_at`` every quarter of
    ``WORKER_HEARTBEAT_STALE_S`` while the worker is healthy (workers/heartbeat.py), and
    ``busy_since`` while a batch runs. A fresh beat is the worker's lease on its claimed jobs."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=20)
    queues = models.JSONField(default=list)
    loaded_models = models.JSONField(default=list, help_text="model, precision, device, memory_mib of each.")
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(help_text="The lease: written while the device loop and the consumer are healthy.")
    loop_at = models.DateTimeField(
        null=True, blank=True, help_text="Written while the device loop is healthy, even when the consumer is not (liveness)."
    )
    busy_since = models.DateTimeField(null=True, blank=True)
    holding = models.JSONField(
        default=list, blank=True, help_text="Translations taken from the broker and not claimed yet, as of the last beat."
    )
    ready = models.BooleanField(default=False, help_text="Models loaded and a canary translation done.")
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def is_alive(self, now: datetime) -> bool:
        """Beating: a long but healthy batch keeps the beat, a hung one stops it."""
        if self.stopped_at is not None:
            return False
        return now - self.beat_at <= timedelta(seconds=settings.WORKER_HEARTBEAT_STALE_S)

    def is_running(self, now: datetime) -> bool:
        """The process and its device loop are healthy (the liveness a restart would fix):
        unlike ``is_alive``, true while the consumer waits for a broker that is down."""
        if self.stopped_at is not None or self.loop_at is None:
            return False
        return now - self.loop_at <= timedelta(seconds=settings.WORKER_HEARTBEAT_STALE_S)

    def is_ready(self, now: datetime) -> bool:
        return self.ready and self.is_alive(now)
