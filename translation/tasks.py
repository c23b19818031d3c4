"""Celery tasks of translation: thin, they check the payload and call the execution layer."""

from __future__ import annotations

import time
from functools import lru_cache

from celery import shared_task
from django.conf import settings

from translation.dispatch import retry_delay_s

from translation.task_events import TRANSLATE_TASK  # noqa: F401 (the task's name, defined beside its events)

# The queue is chosen per job by translation.routing when the job is sent, never here.


@lru_cache(maxsize=256)
def _route_policy(max_batch: int, max_wait_ms: float):
    """The batch policy a route's knobs ask for (few distinct ones: cached, not built per job)."""
    from translation.batching import BatchPolicy

    return BatchPolicy(max_batch_size=max_batch, max_wait_s=max_wait_ms / 1000)


def _check_payload(translation_id, batch_key, chars, max_batch=0, max_wait_ms=0, queued_at=0) -> None:
    """A malformed payload cannot name a row to fail: refuse it loudly, never retry it."""
    if not isinstance(translation_id, int) or isinstance(translation_id, bool):
        raise ValueError(f"translate expects a Translation id (int), got {translation_id!r}")
    if not isinstance(batch_key, str):
        raise ValueError(f"translate expects batch_key as a string, got {batch_key!r}")
    if not isinstance(chars, int) or isinstance(chars, bool) or chars < 0:
        raise ValueError(f"translate expects chars as a non-negative int, got {chars!r}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 0 <= max_batch <= 4096:
        raise ValueError(f"translate expects max_batch as an int 0..4096 (0: the worker's own), got {max_batch!r}")
    if not isinstance(max_wait_ms, (int, float)) or isinstance(max_wait_ms, bool) or not 0 <= max_wait_ms <= 10_000:
        raise ValueError(f"translate expects max_wait_ms as a number 0..10000, got {max_wait_ms!r}")
    if not isinstance(queued_at, (int, float)) or isinstance(queued_at, bool) or queued_at < 0:
        raise ValueError(f"translate expects queued_at as epoch seconds (0: unknown), got {queued_at!r}")


def pending_job(
    translation_id, worker: str, consumed_from: str, *, batch_key="", chars=0, max_batch=0, max_wait_ms=0,
    urgent=False, queued_at=0,
):
    """The batcher's job for a translate message's payload (checked first: ``ValueError`` if the
    task must refuse it)."""
    from translation.batching import PendingJob
    from translation.claims import Delivery

    _check_payload(translation_id, batch_key, chars, max_batch, max_wait_ms, queued_at)
    return PendingJob(
        key=batch_key or consumed_from, payload=Delivery(translation_id, worker, consumed_from), text="",
        tokens=max(1, chars // 4), policy=_route_policy(max_batch, max_wait_ms) if max_batch else None,
        urgent=urgent is True, waited=max(0.0, time.time() - queued_at) if queued_at else 0.0,
    )


@shared_task(name=TRANSLATE_TASK, bind=True, acks_late=True)
def translate(
    self, translation_id: int, batch_key: str = "", chars: int = 0, max_batch: int = 0, max_wait_ms: float = 0,
    urgent: bool = False, queued_at: float = 0, **newer_hints,
) -> str:
    # Hints a newer portal sends that this worker does not know yet are ignored, not fatal: during
    # a rolling deploy the job is still done (the ledger row holds everything it needs).
    from translation.execution import current_batcher, translation_run

    consumed_from = (self.request.delivery_info or {}).get("routing_key") or ""
    job = pending_job(translation_id, self.request.hostname or "", consumed_from, batch_key=batch_key, chars=chars,
                      max_batch=max_batch, max_wait_ms=max_wait_ms, urgent=urgent, queued_at=queued_at)
    try:
        batcher = current_batcher()
        if batcher is None:
            delivery = job.payload
            outcome = translation_run(
                translation_id=delivery.translation_id, worker=delivery.worker, consumed_from=delivery.consumed_from
            )
        else:
            # The device loop runs this job in a batch and answers through the future; this
            # thread waits, so Celery acknowledges the message only after the result is stored.
            # (A batching worker's consumer usually hands the message to the batcher itself,
            # without a pool thread: workers/job_intake.py.)
            outcome = batcher.submit(job).result(timeout=settings.TRANSLATION_JOB_TIMEOUT_S)
    except Exception as exc:
        # A passing failure (the row is queued again and counts its attempts), or the database
        # itself failing before the row could be claimed: send the job again, to the same
        # queue, later. The ledger caps attempts; this caps deliveries while the database is down.
        countdown = retry_delay_s(self.request.retries + 1)
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.TRANSLATION_TASK_MAX_RETRIES) from exc
    return outcome.value


TAKE_QUEUED_TASK = "translation.take_queued"


@shared_task(name=TAKE_QUEUED_TASK, bind=True, acks_late=True)
def take_queued(self, queue: str) -> int:
    """Ledger dispatch's wake-up (translation/dispatch.py): ``queue`` holds queued jobs. A
    batching worker's intake claims them into its batcher (this returns at once); elsewhere
    they are claimed and run here, a batch at a time. Returns the jobs run here."""
    from translation.dispatch import current_intake, translation_run_queued

    if not isinstance(queue, str) or not queue.strip():
        raise ValueError(f"take_queued expects a queue name, got {queue!r}")
    intake = current_intake()
    if intake is not None and intake.is_alive():
        intake.wake(queue)
        return 0
    from translation.task_events import worker_task_events

    worker = self.request.hostname or ""
    ran, retry_in = translation_run_queued(
        queue=queue, worker=worker, batch=settings.TRANSLATION_MAX_BATCH_SIZE, events=worker_task_events(worker),
    )
    if retry_in is not None:  # a job failed for a passing reason and is queued again: look once it may run
        take_queued.apply_async(args=[queue], queue=queue, countdown=retry_in)
    return ran
