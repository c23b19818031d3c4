"""How a queued job reaches a worker: its own message, or a wake-up for its queue.

``TRANSLATION_DISPATCH`` chooses:

- ``jobs`` (the default): one Celery message per job (``translation.translate``). Flower shows
  every job as a task; a worker pays the per-message cost for each (the delivery, the
  unacknowledged index, the task events, the acknowledgement: about 0.5 ms of CPU per job on a
  2-core Intel Xeon since the consumer hands each message straight to the batcher,
  ``workers/job_intake.py``; 3.2–4.0 ms on a slower 2-core machine before, with a pool thread
  per job), and the portal about 0.13 ms per message sent in a batch.
- ``ledger``: the ledger row is the job, and the queue gets a wake-up (``translation.take_queued``)
  only when none is pending for it. The worker that takes the wake-up claims the queue's queued
  rows from the database in batches (``translations_claim_queued``) until none is left. Under
  load a wake-up covers a batch or more, so the per-message cost is paid per batch, not per job.
  Flower lists every job all the same (the worker sends each claimed job's task events,
  ``translation.task_events``); the admin, ``manage.py status`` and the Prometheus metrics
  count every job as before.

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
from functools import partial

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


def broker_redis():
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
    found = broker_redis()
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
    found = broker_redis()
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

def translations_claim_queued(queue: str, *, worker: str, limit: int, holder: int | None = None, gave_up=None) -> list:
    """Claim up to ``limit`` of ``queue``'s queued rows, oldest first (ledger dispatch: the rows
    are the jobs, no message names them). Rows another transaction holds are skipped, so workers
    looking at one queue at once take different rows. A row queued again after a passing failure
    is left until its ``retry_at``. A row out of attempts (a job that kept killing workers) is
    failed instead of claimed, and the claim looks further.

    One statement per look, in plain SQL (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
    LOCKED) RETURNING``): the ORM's select, update and transaction took 2 ms of CPU per claim
    against 0.6 (measured, one row), which a lone job at a light load waits for.

    ``holder``: the claimed rows are listed as its (``translations_hold``) before the commit
    publishes them, so no loop of this process claims one again for a job message.

    ``gave_up``, if given, is called with the jobs of the rows failed instead (for their task events).
    """
    from django.db import transaction
    from django.utils import timezone

    from translation.claims import (
        _count_claims, _count_gave_up, _labels_of, claimed_job, translations_hold, translations_let_go,
    )

    now = timezone.now()
    rows: list[dict] = []
    held: list[tuple[int, int]] = []
    try:
        with transaction.atomic():  # several looks (rows out of attempts) commit together
            while (wanted := limit - len(held)) > 0:
                found = _claim_queued_rows(queue, worker=worker, limit=wanted, now=now)
                rows += found
                claims = [(row["id"], row["claims"]) for row in found if not row["gave_up"]]
                held += claims
                if holder is not None:
                    translations_hold(claims, holder)
                if len(found) < wanted:
                    break
    except BaseException:
        if holder is not None:
            translations_let_go(held, holder)  # the claims were not committed
        raise
    rows.sort(key=lambda row: row["id"])
    failed = [row for row in rows if row["gave_up"]]
    fresh = [row for row in rows if not row["gave_up"]]
    for row in failed:
        _count_gave_up(**_labels_of(row))
    _count_claims(fresh, now)
    jobs = [claimed_job(row, now) for row in fresh]
    if failed and gave_up is not None:
        try:
            gave_up([claimed_job(row, now) for row in failed])
        except Exception:  # the claims are committed: they must reach the caller
            logger.warning("Could not report %d job(s) failed by a claim", len(failed), exc_info=True)
    return jobs


def _claim_queued_rows(queue: str, *, worker: str, limit: int, now) -> list[dict]:
    """One statement: the queue's oldest ``limit`` claimable rows, each claimed as a new attempt
    or, out of attempts, failed (``translation.claims.claim_picked``)."""
    from django.db import connection

    from translation.claims import claim_picked, claim_sql_names
    from translation.models import TranslationStatus

    table, c, locking = claim_sql_names()
    pick = (f"SELECT {c['id']} FROM {table} WHERE {c['queue']} = %s AND {c['status']} = %s "
            f"AND ({c['retry_at']} IS NULL OR {c['retry_at']} <= %s) ORDER BY {c['id']} LIMIT %s{locking}")
    params = [queue, TranslationStatus.QUEUED, connection.ops.adapt_datetimefield_value(now), limit]
    return claim_picked(pick, params, worker=worker, consumed_from=queue, started=False, now=now)


def translations_start(jobs: list) -> list:
    """Stamp ``started_at`` on rows claimed ahead of their batch, as the batch starts: compute
    time starts there, and a claim that never started is told apart (``attempts_given_back``)."""
    start = BatchStart(jobs)
    start()
    return start.jobs


class BatchStart:
    """The start of a batch of jobs claimed ahead of it (ledger dispatch), stamped once: while
    the engine process computes the batch's first forward pass (``execution._translate``), so a lone
    job does not wait for the statement, or before the results are settled if no pass ran."""

    def __init__(self, jobs: list) -> None:
        from dataclasses import replace

        from django.utils import timezone

        self.now = timezone.now()  # the jobs' compute time starts here
        self.jobs = [replace(job, claimed_at=self.now) for job in jobs]
        self._due = bool(jobs)

    def __call__(self) -> None:
        if not self._due:
            return
        self._due = False
        try:
            _stamp_start(self.jobs, self.now)
        except Exception:  # the batch runs on (storing its results retries while the database is down)
            logger.warning("Could not stamp the start of a batch of %d job(s)", len(self.jobs), exc_info=True)


def _stamp_start(jobs: list, now) -> None:
    """``started_at`` on the jobs' rows that have none, while each job's claim is the latest (a
    superseded claim's batch must not stamp a newer claim, which would then keep its attempt if
    given back unstarted). On PostgreSQL one statement of the same text for every batch (ids and
    claims as two arrays); the ORM elsewhere."""
    from django.db import connection, transaction

    from translation.execution import _latest_claims
    from translation.models import Translation, TranslationStatus

    if connection.vendor != "postgresql":
        _latest_claims(jobs).filter(started_at__isnull=True).update(started_at=now)
        return
    quote = connection.ops.quote_name
    table = quote(Translation._meta.db_table)
    column = {name: quote(Translation._meta.get_field(name).column) for name in ("id", "claims", "status", "started_at")}
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {column['started_at']} = %s "
            f"FROM unnest(CAST(%s AS bigint[]), CAST(%s AS integer[])) AS v(id, claim) "
            f"WHERE {table}.{column['id']} = v.id AND {table}.{column['claims']} = v.claim "
            f"AND {table}.{column['status']} = %s AND {table}.{column['started_at']} IS NULL",
            [connection.ops.adapt_datetimefield_value(now), [job.id for job in jobs], [job.claim for job in jobs],
             TranslationStatus.RUNNING],
        )


# Ledger dispatch: the thread of this process that claims a woken queue's jobs into the batcher
# (workers/ledger_intake.py), when a worker runs one.
_intake = None


def use_intake(intake) -> None:
    global _intake
    _intake = intake


def current_intake():
    return _intake


def translation_run_queued(*, queue: str, worker: str, batch: int, engines=None, events=None) -> tuple[int, float | None]:
    """Ledger dispatch without a batcher: claim ``queue``'s queued jobs ``batch`` at a time and
    run each batch here, until none is left. Returns the jobs run, and in how many seconds the
    soonest job queued again for a retry may run (None: none was). ``events``: the jobs' task
    events for Flower (``translation.task_events``)."""
    from translation.claims import translations_let_go
    from translation.execution import TransientFailure, translation_run_batch

    ran, retry_in = 0, None
    holder = threading.get_ident()  # its claims are this thread's while it runs them
    while True:
        bell_clear(queue)
        gave_up = partial(events.gave_up, queue=queue) if events is not None else None
        jobs = translations_claim_queued(queue, worker=worker, limit=batch, holder=holder, gave_up=gave_up)
        if events is not None:
            events.claimed(jobs, queue)  # sent with their ends (or, for a long batch, by the sender's clock)
        if not jobs:
            return ran, retry_in
        try:
            outcomes = translation_run_batch(jobs, **({"engines": engines} if engines else {}))
        except Exception as exc:  # the task is retried; the jobs are still this worker's claims
            if events is not None:
                for job in jobs:
                    events.finished(job, error=exc)
                events.flush_soon()
            raise
        finally:
            translations_let_go([(job.id, job.claim) for job in jobs], holder)
        ran += len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if events is not None:
                failed = isinstance(outcome, BaseException)
                events.finished(job, outcome=None if failed else outcome, error=outcome if failed else None)
            if isinstance(outcome, TransientFailure):
                retry_in = min(retry_in or float("inf"), retry_delay_s(job.attempt))
        if events is not None:  # the batch's events, its claims' with its ends
            events.flush_soon()
