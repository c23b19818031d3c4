"""The reconciler every worker runs in a thread: hands over the claims of workers whose
heartbeat went stale (a lost host) a few times a second (the rows of workers that never beat
once per staleness period), and sends again the queued jobs no queue holds every few seconds
(``translation.recovery``; that look by one reconciler of the fleet, ``lost_look_turn``).
Several workers running it at once is safe: each row is taken by one of them (``SELECT ... FOR
UPDATE SKIP LOCKED``), and a job sent twice is done once."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection

from translation.recovery import (
    dead_workers_handle,
    lost_jobs_resend,
    lost_look_release,
    lost_look_turn,
    overdue_claims_handle,
)

logger = logging.getLogger(__name__)


class Reconciler(threading.Thread):
    def __init__(self, worker: str = "") -> None:
        super().__init__(name="reconciler", daemon=True)
        self.worker = worker
        self._stopping = threading.Event()
        self._next_resend = time.monotonic() + settings.TRANSLATION_LOST_AFTER_S / 2
        self._ok_since: float | None = None  # since when this reconciler reaches the database
        self._missing: set[tuple[int, int]] = set()  # (id, claims) of the queued jobs no queue held at the last look
        self._next_orphans = 0.0  # when to look again for running rows whose worker never beat

    def run(self) -> None:
        while not self._stopping.wait(settings.TRANSLATION_RECOVERY_EVERY_S):
            try:
                connection.ensure_connection()
                now = time.monotonic()
                if self._ok_since is None:
                    self._ok_since = now
                # Back from a database outage, every other worker's beat is old too: wait for
                # them to beat again before presuming anyone dead.
                if now - self._ok_since >= 2 * settings.WORKER_HEARTBEAT_STALE_S:
                    # Stale beats at every turn (a cheap query); the rows of workers that never
                    # beat once per staleness period: that query cost about 1.4 ms of this
                    # process's CPU and 3 ms of PostgreSQL's per look (measured), four looks a
                    # second in every worker whatever the load, for a rare case.
                    orphans = now >= self._next_orphans
                    if orphans:
                        self._next_orphans = now + settings.WORKER_HEARTBEAT_STALE_S
                    dead_workers_handle(exclude=self.worker, orphans=orphans)
                if time.monotonic() >= self._next_resend:
                    period = settings.TRANSLATION_LOST_AFTER_S / 2
                    self._next_resend = time.monotonic() + period
                    # One reconciler of the fleet looks, period after period (lost_look_turn).
                    if lost_look_turn(self.worker, period):
                        self._missing = lost_jobs_resend(
                            older_than_s=settings.TRANSLATION_LOST_AFTER_S, seen_missing=self._missing
                        ).missing
                        overdue_claims_handle()
                    else:  # another looks: this one's suspects grow old, and count for nothing later
                        self._missing = set()
            except Exception:  # the database is down: try again at the next turn
                logger.warning("Reconciler turn failed", exc_info=True)
                lost_look_release(self.worker)  # a reconciler whose looks fail leaves them to another
                self._missing = set()
                self._ok_since = None
                connection.close()
        lost_look_release(self.worker)
        close_old_connections()

    def stop(self) -> None:
        self._stopping.set()
