"""What each worker says about itself: the heartbeat its batching loop writes."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models


class WorkerHeartbeat(models.Model):
    """One row per worker name. The device loop writes ``beat_at`` about every second, and
    ``busy_since`` when a batch starts (cleared when it ends): a long but healthy batch is not a
    dead worker, and a hung one is seen once it outlasts the engine call timeout."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=20)
    queues = models.JSONField(default=list)
    loaded_models = models.JSONField(default=list, help_text="model, precision, device, memory_mib of each.")
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()
    busy_since = models.DateTimeField(null=True, blank=True)
    ready = models.BooleanField(default=False, help_text="Models loaded and a canary translation done.")
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def is_alive(self, now: datetime) -> bool:
        """Beating, or in a batch that has not yet outlasted the engine's call timeout."""
        from workers.engine_process import CALL_TIMEOUT_S

        if self.stopped_at is not None:
            return False
        stale = timedelta(seconds=settings.WORKER_HEARTBEAT_STALE_S)
        if self.busy_since is not None:
            return now - self.busy_since <= timedelta(seconds=CALL_TIMEOUT_S) + stale
        return now - self.beat_at <= stale

    def is_ready(self, now: datetime) -> bool:
        return self.ready and self.is_alive(now)
