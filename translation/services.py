"""Writes to the Translation ledger: request, enqueue, claim, complete, fail, retry.

A job's life: ``translation_request`` writes a queued row and, on commit, ``translation_enqueue``
sends its id to the route's queue. A worker calls ``translation_run``, which claims the row,
runs the engine and stores the text. Every write is a conditional UPDATE, so a job delivered
twice never duplicates or overwrites a done translation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from translation import errors
from translation.engines import EngineError, EngineSpec, engine_for
from translation.models import Translation, TranslationStatus
from translation.routing import route_for

logger = logging.getLogger(__name__)

EMPTY_OUTPUT = "The model produced an empty translation."
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
    SKIPPED = "skipped"  # already finished, or gone: a duplicate delivery


@dataclass(frozen=True)
class Job:
    """What a worker needs of a claimed row to run it."""

    id: int
    text: str
    source: str
    target: str
    spec: EngineSpec


def translation_claim(*, translation_id: int, worker: str, consumed_from: str) -> Job | None:
    """Mark the row running for ``worker``; None when it is finished or gone (duplicate delivery)."""
    now = timezone.now()
    claimed = Translation.objects.filter(
        pk=translation_id, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]
    ).update(
        status=TranslationStatus.RUNNING, worker=worker, consumed_from=consumed_from,
        attempts=F("attempts") + 1, started_at=now, updated_at=now,
    )
    if not claimed:
        return None
    row = Translation.objects.select_related("message").get(pk=translation_id)
    return Job(
        id=row.pk, text=row.message.text, source=row.source_language, target=row.target_language,
        spec=EngineSpec(engine=row.engine, model=row.model_name, precision=row.precision or "fp32", device=_device()),
    )


def translation_complete(*, translation_id: int, text: str) -> bool:
    """Store the result unless the row is already done; True when this call stored it."""
    now = timezone.now()
    stored = (
        Translation.objects.filter(pk=translation_id)
        .exclude(status=TranslationStatus.DONE)
        .update(status=TranslationStatus.DONE, text=text, failure_reason="", finished_at=now, updated_at=now)
    )
    return bool(stored)


def translation_fail(*, translation_id: int, reason: str) -> bool:
    """Fail the row visibly with ``reason``, unless it is already done."""
    now = timezone.now()
    failed = (
        Translation.objects.filter(pk=translation_id)
        .exclude(status=TranslationStatus.DONE)
        .update(status=TranslationStatus.FAILED, failure_reason=reason[:2000], finished_at=now, updated_at=now)
    )
    return bool(failed)


def translation_requeue(*, translation_id: int, reason: str) -> None:
    """Put a running row back to queued before a retry, keeping the last error visible."""
    Translation.objects.filter(pk=translation_id, status=TranslationStatus.RUNNING).update(
        status=TranslationStatus.QUEUED, failure_reason=reason[:2000], updated_at=timezone.now()
    )


def translation_run(*, translation_id: int, worker: str, consumed_from: str) -> RunOutcome:
    """Claim, translate and store one job. Bad input fails the row; other errors propagate for a retry."""
    job = translation_claim(translation_id=translation_id, worker=worker, consumed_from=consumed_from)
    if job is None:
        logger.info("Translation %s is already finished or gone; delivery skipped", translation_id)
        return RunOutcome.SKIPPED
    try:
        engine = engine_for(job.spec)
        [text] = engine.translate([job.text], job.source, job.target)
    except EngineError as exc:
        translation_fail(translation_id=job.id, reason=str(exc))
        return RunOutcome.FAILED
    if not text:
        translation_fail(translation_id=job.id, reason=EMPTY_OUTPUT)
        return RunOutcome.FAILED
    translation_complete(translation_id=job.id, text=text)
    return RunOutcome.DONE


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
