"""How a queued job reaches a worker: its own message, or a wake-up for its queue.

``TRANSLATION_DISPATCH`` chooses:

- ``jobs`` (the default): one Celery message per job (``translation.translate``). Flower shows
  every job as a task; a worker pays Celery's per-message cost for each (the delivery, the
  unacknowledged index, the task events, the acknowledgement: about 2.5 ms of CPU per job).
- ``ledger``: the ledger row is the job, and the queue gets a wake-up (``translation.take_queued``)
  only when none is pending for it. The worker that takes the wake-up claims the queue's queued
  rows from the database in batches (``translations_claim_queued``) until none is left. Under
  load a wake-up covers a batch or more, so the per-message cost is paid per batch, not per job.
  Flower shows the wake-ups, not each job; the admin, ``manage.py status`` and the Prometheus
  metrics count every job as before.

The bell: on a Redis broker, ``SET <queue's bell> NX`` decides who sends the wake-up; the worker
clears the bell before each look at the ledger, so a job committed after the look rings again
and none waits unseen. The bell expires after ``BELL_TTL_S`` in case a worker died holding it
(its wake-up taken, the bell not cleared); the reconciler rings for jobs that waited longer than
``TRANSLATION_LOST_AFTER_S`` (``translation.recovery``). Another broker has no bell here: every
job sends a wake-up, which is correct, only not cheaper.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

logger = logging.getLogger(__name__)

JOBS = "jobs"
LEDGER = "ledger"
DISPATCH_MODES = (JOBS, LEDGER)
BELL_KEY = "translation.bell:{queue}"
# A job queued again after a passing failure waits 2, 4, 8 ... s (at most this) before its next
# attempt, in either dispatch: a Celery countdown for a message, ``retry_at`` for a ledger row.
MAX_BACKOFF_S = 60


def retry_delay_s(attempt: int) -> float:
    """How long a job waits after its ``attempt``-th attempt failed for a passing reason."""
    return float(min(2 ** max(1, attempt), MAX_BACKOFF_S))


def ledger_dispatch() -> bool:
    return getattr(settings, "TRANSLATION_DISPATCH", JOBS) == LEDGER


def bell_ttl_s() -> float:
    return max(1.0, settings.TRANSLATION_LOST_AFTER_S)


_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _bell_client():
    """(Redis client, key prefix) of the broker, or None where the broker is not Redis."""
    from cs_portal.celery import app

    url = app.conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    prefix = (app.conf.broker_transport_options or {}).get("global_keyprefix", "") or ""
    return client, prefix


def bell_ring(queue: str) -> bool:
    """Set ``queue``'s bell; True when it was not set (the caller sends the wake-up). Where the
    bell cannot be read (not Redis, or unreachable) the answer is True: a wake-up too many costs
    a message, a wake-up missing leaves jobs waiting."""
    found = _bell_client()
    if found is None:
        return True
    client, prefix = found
    try:
        return bool(client.set(prefix + BELL_KEY.format(queue=queue), b"1", nx=True, px=int(bell_ttl_s() * 1000)))
    except Exception:
        logger.warning("Could not read the bell of %s; sending a wake-up", queue, exc_info=True)
        return True


def bell_clear(queue: str) -> None:
    """Clear ``queue``'s bell, before a worker looks at its queued jobs."""
    found = _bell_client()
    if found is None:
        return
    client, prefix = found
    try:
        client.delete(prefix + BELL_KEY.format(queue=queue))
    except Exception:  # the bell expires by itself
        logger.warning("Could not clear the bell of %s", queue, exc_info=True)


class CommitWake:
    """The wake-up the jobs of one transaction share for their queue. They become visible to
    workers together, at the commit, so the first ring after it covers them all: a look that
    follows it sees every one. Each job's on-commit callback holds it; the first whose ring
    succeeds marks it sent, and the others have nothing to do."""

    __slots__ = ("queue", "sent")

    def __init__(self, queue: str) -> None:
        self.queue, self.sent = queue, False


def commit_wake(queue: str) -> CommitWake:
    """The wake-up of ``queue`` for the transaction open now (a new one once it has been sent).
    A savepoint rolled back drops its jobs' callbacks, not the wake-up: the jobs left ring it."""
    from django.db import transaction

    pending = transaction.get_connection().__dict__.setdefault("translation_commit_wakes", {})
    wake = pending.get(queue)
    if wake is None or wake.sent:
        wake = pending[queue] = CommitWake(queue)
    return wake


def queue_wake(queue: str, *, force: bool = False) -> bool:
    """Send ``queue`` a wake-up unless one is pending (``force``: even then). Returns False when
    the broker refused it: the jobs stay queued in the ledger for the reconciler's next ring."""
    from translation.tasks import take_queued

    if not force and not bell_ring(queue):
        return True  # a wake-up is on its way, or a worker is looking at this queue now
    try:
        take_queued.apply_async(args=[queue], queue=queue, argsrepr=repr([queue]), kwargsrepr="{}")
    except Exception:
        logger.exception("Could not send a wake-up to %s; its jobs stay queued", queue)
        bell_clear(queue)  # the next job rings again
        return False
    return True


# --- the worker's side ------------------------------------------------------------------

def translations_claim_queued(queue: str, *, worker: str, limit: int) -> list:
    """Claim up to ``limit`` of ``queue``'s queued rows, oldest first, in one transaction (ledger
    dispatch: the rows are the jobs, no message names them). Rows another transaction holds are
    skipped, so workers looking at one queue at once take different rows. A row queued again
    after a passing failure is left until its ``retry_at``."""
    from django.db import transaction
    from django.db.models import Q
    from django.utils import timezone

    from translation.execution import _claim_rows, _job_of
    from translation.models import Translation, TranslationStatus

    now = timezone.now()
    waiting = Q(retry_at__isnull=True) | Q(retry_at__lte=now)
    claimed: list[Translation] = []
    with transaction.atomic():
        while len(claimed) < limit:  # rows out of attempts are failed, not claimed: look further
            wanted = limit - len(claimed)
            rows = list(
                Translation.objects.select_for_update(of=("self",), skip_locked=True)
                .select_related("message")
                .filter(waiting, queue=queue, status=TranslationStatus.QUEUED)
                .order_by("pk")[:wanted]
            )
            for row in rows:
                row.worker, row.consumed_from = worker, queue
            claimed += _claim_rows(rows, now, started=False)  # they wait for their batch first
            if len(rows) < wanted:
                break
    return [_job_of(row, now) for row in claimed]


# Ledger dispatch: the thread of this process that claims a woken queue's jobs into the batcher
# (workers/ledger_intake.py), when a worker runs one.
_intake = None


def use_intake(intake) -> None:
    global _intake
    _intake = intake


def current_intake():
    return _intake


def translation_run_queued(*, queue: str, worker: str, batch: int, engines=None) -> tuple[int, float | None]:
    """Ledger dispatch without a batcher: claim ``queue``'s queued jobs ``batch`` at a time and
    run each batch here, until none is left. Returns the jobs run, and in how many seconds the
    soonest job queued again for a retry may run (None: none was)."""
    from translation.execution import TransientFailure, translation_run_batch

    ran, retry_in = 0, None
    while True:
        bell_clear(queue)
        jobs = translations_claim_queued(queue, worker=worker, limit=batch)
        if not jobs:
            return ran, retry_in
        outcomes = translation_run_batch(jobs, **({"engines": engines} if engines else {}))
        ran += len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, TransientFailure):
                retry_in = min(retry_in or float("inf"), retry_delay_s(job.attempt))
