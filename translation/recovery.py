"""Nothing lost: the ledger, not the broker, is the source of truth.

A job is claimed in the ledger (``worker``, ``attempts``) before it is computed, and the claim
lives as long as its worker's heartbeat is fresh (``WORKER_HEARTBEAT_STALE_S``): the heartbeat
is the lease. Two ways a claim comes back to the queue:

- ``claims_release``: at once, when a worker's supervisor sees the process end, or when a
  worker of that name starts again;
- ``dead_claims_release``: running rows whose worker stopped beating (a lost host, a frozen
  process), found by the reconciler that every worker runs.

``lost_jobs_resend`` sends again the queued rows that no queue holds (never sent, or the broker
restarted empty), counting each resend and failing the row visibly after
``TRANSLATION_MAX_RESENDS``. A job handed over can never give two done results: the worker
whose claim was superseded stores nothing (``translation.execution``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from translation.models import Translation, TranslationStatus

logger = logging.getLogger(__name__)

HANDED_OVER = "Its worker {worker} stopped before finishing ({why}); handed over to another worker."
LOST = "Sent {times} times without reaching a worker (lost by the broker each time)."


def _requeue(rows, reason: str) -> list[int]:
    """Put claimed or lost rows back to queued, and send each on commit."""
    from translation.services import translation_enqueue

    ids = [row.pk for row in rows]
    if not ids:
        return []
    now = timezone.now()
    Translation.objects.filter(pk__in=ids).update(
        status=TranslationStatus.QUEUED, failure_reason=reason[:2000], enqueued_at=now, updated_at=now,
        resends=F("resends") + 1,
    )
    fresh = list(Translation.objects.filter(pk__in=ids).select_related("message"))
    transaction.on_commit(lambda: [translation_enqueue(translation=row) for row in fresh])
    return ids


def claims_release(*, worker: str, reason: str) -> list[int]:
    """Hand ``worker``'s running jobs back to the queue now (its process has ended)."""
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=TranslationStatus.RUNNING, worker=worker)
            .only("pk")
        )
        released = _requeue(rows, HANDED_OVER.format(worker=worker, why=reason))
    if released:
        logger.warning("Handed over %d job(s) of %s: %s", len(released), worker, reason)
    return released


def live_workers(names) -> set[str]:
    """Those of ``names`` whose heartbeat is fresh: their claims hold."""
    from workers.models import WorkerHeartbeat

    now = timezone.now()
    return {beat.name for beat in WorkerHeartbeat.objects.filter(name__in=set(names)) if beat.is_alive(now)}


def dead_claims_release(*, exclude: str = "") -> dict[str, list[int]]:
    """Hand over the running jobs of every worker whose heartbeat went stale (but ``exclude``'s:
    a worker knows it is alive, even when its own beat is late)."""
    holders = set(
        Translation.objects.filter(status=TranslationStatus.RUNNING).exclude(worker="").values_list("worker", flat=True)
    ) - {exclude}
    dead = holders - live_workers(holders)
    return {worker: claims_release(worker=worker, reason="its heartbeat went stale") for worker in sorted(dead)}


@dataclass
class Resent:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def lost_jobs_resend(*, older_than_s: float) -> Resent:
    """Send again the queued rows older than ``older_than_s`` that no queue holds: never sent
    (the broker was down at commit), or lost (the broker restarted empty). Where the broker
    cannot be searched for a job (not Redis), only never-sent rows are resent."""
    from translation.queues import translation_ids_in_broker

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    candidates = list(
        Translation.objects.filter(status=TranslationStatus.QUEUED, created_at__lt=cutoff)
        .exclude(enqueued_at__gte=cutoff)
        .values_list("pk", "queue", "enqueued_at")
    )
    if not candidates:
        return Resent()
    held = translation_ids_in_broker(sorted({queue for _, queue, _ in candidates if queue}))
    lost = [pk for pk, _, enqueued_at in candidates if enqueued_at is None or (held is not None and pk not in held)]
    result = Resent()
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk__in=lost, status=TranslationStatus.QUEUED)
            .only("pk", "resends")
        )
        give_up = [row for row in rows if row.resends >= settings.TRANSLATION_MAX_RESENDS]
        if give_up:
            now = timezone.now()
            for row in give_up:
                Translation.objects.filter(pk=row.pk).update(
                    status=TranslationStatus.FAILED, failure_reason=LOST.format(times=row.resends + 1),
                    finished_at=now, updated_at=now,
                )
            result.failed = [row.pk for row in give_up]
        result.sent = _requeue([row for row in rows if row not in give_up], "Sent again: no queue held it.")
    if result.sent or result.failed:
        logger.warning("Resent %d lost job(s); failed %d after %d resends", len(result.sent), len(result.failed),
                       settings.TRANSLATION_MAX_RESENDS)
    return result
