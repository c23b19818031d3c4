"""Writes to the Translation ledger: request, enqueue, claim, complete, fail, retry.

A job's life: ``translation_request`` writes a queued row and, on commit, ``translation_enqueue``
sends its id to the route's queue. A worker calls ``translation_run``, which claims the row,
runs the engine and stores the text. Every write is a conditional UPDATE, so a job delivered
twice never duplicates or overwrites a done translation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from translation import errors
from translation.engines import EngineError, EngineSpec, engine_for
from translation.models import Translation, TranslationStatus
from translation.routing import route_for

logger = logging.getLogger(__name__)

EMPTY_OUTPUT = "The model produced an empty translation."
GAVE_UP = "Gave up after {attempts} attempts. {reason}"
RETRYING = "Attempt {attempt} failed, retrying. {reason}"
UNFINISHED = "The job was delivered that many times without finishing (did it stop its worker?)."
NOT_RETRYABLE = "Translation {id} is {status}; only failed translations can be retried."


def translation_request(*, message, target_language: str) -> Translation:
    """Record that ``message`` needs a translation into ``target_language``; send it on commit.

    A pair without a route is recorded as failed with the reason, never dropped.
    """
    translation = Translation(message=message, source_language=message.language, target_language=target_language)
    try:
        route = route_for(message.language, target_language)
    except errors.NoRoute as exc:
        translation.status = TranslationStatus.FAILED
        translation.failure_reason = exc.message
        translation.finished_at = timezone.now()
        translation.save()
        logger.warning("Translation %s failed at once: %s", translation.pk, exc.message)
        return translation
    translation.queue, translation.engine = route.queue, route.engine
    translation.model_name, translation.precision = route.model, route.precision
    translation.save()
    transaction.on_commit(lambda: translation_enqueue(translation_id=translation.pk, queue=route.queue))
    return translation


def translation_enqueue(*, translation_id: int, queue: str) -> bool:
    """Send the job to its queue. A broker failure leaves the row queued (and logged)."""
    from translation.tasks import translate

    sent_at = timezone.now()  # before the send: a fast worker may start before it returns
    try:
        translate.apply_async(args=[translation_id], queue=queue)
    except Exception:  # the broker is down or refused: the ledger row keeps the job
        logger.exception("Could not send translation %s to %s; it stays queued", translation_id, queue)
        return False
    Translation.objects.filter(pk=translation_id, enqueued_at__isnull=True).update(enqueued_at=sent_at)
    return True


class RunOutcome(Enum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # already finished, gone, or stored by a later claim: a duplicate delivery


class TransientFailure(Exception):
    """The job failed for a passing reason; the row is queued again and the job should be retried."""


@dataclass(frozen=True)
class Job:
    """What a worker needs of a claimed row to run it. ``attempt`` is the claim's token."""

    id: int
    attempt: int
    text: str
    source: str
    target: str
    spec: EngineSpec


def translation_claim(*, translation_id: int, worker: str, consumed_from: str) -> Job | None:
    """Mark the row running for ``worker`` as a new attempt.

    Returns None when there is nothing to do: the row is finished or gone (a duplicate
    delivery), or it has used up its attempts (a job that kept killing workers), in which case
    it is failed with that reason.
    """
    with transaction.atomic():
        row = (
            Translation.objects.select_for_update()
            .select_related("message")
            .filter(pk=translation_id, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
            .first()
        )
        if row is None:
            return None
        if row.attempts >= settings.TRANSLATION_MAX_ATTEMPTS:
            _finish(row, TranslationStatus.FAILED, reason=GAVE_UP.format(attempts=row.attempts, reason=row.failure_reason or UNFINISHED))
            return None
        row.status, row.worker, row.consumed_from = TranslationStatus.RUNNING, worker, consumed_from
        row.attempts += 1
        row.started_at = timezone.now()
        row.save(update_fields=["status", "worker", "consumed_from", "attempts", "started_at", "updated_at"])
    return Job(
        id=row.pk, attempt=row.attempts, text=row.message.text, source=row.source_language,
        target=row.target_language,
        spec=EngineSpec(engine=row.engine, model=row.model_name, precision=row.precision or "fp32", device=_device()),
    )


def _finish(row: Translation, status: int, *, reason: str = "") -> None:
    row.status, row.failure_reason, row.finished_at = status, reason[:2000], timezone.now()
    row.save(update_fields=["status", "failure_reason", "finished_at", "updated_at"])


def _claimed(job: Job):
    """The row, only while ``job``'s claim is the latest: a later claim supersedes it."""
    return Translation.objects.filter(pk=job.id, status=TranslationStatus.RUNNING, attempts=job.attempt)


def translation_complete(*, job: Job, text: str) -> bool:
    """Store the result of ``job``'s claim; True when stored, False when superseded or finished."""
    now = timezone.now()
    return bool(
        _claimed(job).update(status=TranslationStatus.DONE, text=text, failure_reason="", finished_at=now, updated_at=now)
    )


def translation_fail(*, translation_id: int, reason: str, job: Job | None = None) -> bool:
    """Fail the row visibly with ``reason`` (only ``job``'s claim, when given); never a done row."""
    now = timezone.now()
    rows = _claimed(job) if job else Translation.objects.filter(pk=translation_id).exclude(status=TranslationStatus.DONE)
    return bool(rows.update(status=TranslationStatus.FAILED, failure_reason=reason[:2000], finished_at=now, updated_at=now))


def translation_requeue(*, job: Job, reason: str) -> bool:
    """Put ``job``'s row back to queued before a retry, keeping the last error visible."""
    return bool(_claimed(job).update(status=TranslationStatus.QUEUED, failure_reason=reason[:2000], updated_at=timezone.now()))


def translation_run(*, translation_id: int, worker: str, consumed_from: str) -> RunOutcome:
    """Claim, translate and store one job.

    Input the model cannot take fails the row. Any other error queues the row again and
    raises TransientFailure, until the row's attempts are used up; then it fails visibly.
    """
    job = translation_claim(translation_id=translation_id, worker=worker, consumed_from=consumed_from)
    if job is None:
        logger.info("Translation %s is finished, gone or out of attempts; delivery skipped", translation_id)
        return RunOutcome.SKIPPED
    try:
        engine = engine_for(job.spec)
        [text] = engine.translate([job.text], job.source, job.target)
    except EngineError as exc:
        translation_fail(translation_id=job.id, reason=str(exc), job=job)
        return RunOutcome.FAILED
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if job.attempt >= settings.TRANSLATION_MAX_ATTEMPTS:
            translation_fail(translation_id=job.id, reason=GAVE_UP.format(attempts=job.attempt, reason=reason), job=job)
            return RunOutcome.FAILED
        translation_requeue(job=job, reason=RETRYING.format(attempt=job.attempt, reason=reason))
        raise TransientFailure(reason) from exc
    if not text:
        translation_fail(translation_id=job.id, reason=EMPTY_OUTPUT, job=job)
        return RunOutcome.FAILED
    return RunOutcome.DONE if translation_complete(job=job, text=text) else RunOutcome.SKIPPED


def translation_resend_unsent(*, older_than_s: float) -> int:
    """Send again the queued rows that never reached a queue (the broker was down at commit).

    A row that is already on a queue is left alone; sending it twice would be harmless (the
    ledger stores one result) but wasteful.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    rows = Translation.objects.filter(status=TranslationStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=cutoff)
    sent = 0
    for translation_id, queue in rows.values_list("id", "queue"):
        sent += translation_enqueue(translation_id=translation_id, queue=queue)
    return sent


@transaction.atomic
def translation_retry(*, translation: Translation) -> Translation:
    """Send a failed translation again, along its current route."""
    translation = Translation.objects.select_for_update().get(pk=translation.pk)
    if translation.status != TranslationStatus.FAILED:
        raise errors.ApplicationError(
            NOT_RETRYABLE.format(id=translation.pk, status=translation.get_status_display()), code="not_retryable"
        )
    route = route_for(translation.source_language, translation.target_language)
    translation.status, translation.failure_reason, translation.text = TranslationStatus.QUEUED, "", ""
    translation.queue, translation.engine = route.queue, route.engine
    translation.model_name, translation.precision = route.model, route.precision
    translation.enqueued_at = translation.started_at = translation.finished_at = None
    translation.save()
    transaction.on_commit(lambda: translation_enqueue(translation_id=translation.pk, queue=route.queue))
    return translation


def _device() -> str:
    """The device this process computes on; the worker entry point sets it."""
    import os

    return os.environ.get("TRANSLATION_DEVICE", "cpu")
