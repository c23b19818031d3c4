"""Writes to the Translation ledger on the sending side: request, enqueue, resend, retry.

A job's life: ``translation_request`` writes a queued row and, on commit, ``translation_enqueue``
sends its id to the route's queue. A worker runs it through ``translation.execution``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from translation import errors
from translation.models import Translation, TranslationStatus
from translation.routing import route_for

logger = logging.getLogger(__name__)

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
    # Stamped now, sent at commit: one statement per job less on the hot path; a failed send
    # clears it again (translation_enqueue), so "queued, never sent" stays visible.
    translation.enqueued_at = timezone.now()
    translation.save()
    transaction.on_commit(lambda: translation_enqueue(translation=translation))
    return translation


def translation_enqueue(*, translation: Translation) -> bool:
    """Send the job to its queue. A broker failure leaves the row queued (and logged).

    The payload is the row's id; the worker reads everything else from the ledger. Two hints
    ride along for the worker's batcher: which jobs may share a forward pass, and the text's
    length for its token budget.
    """
    from translation.tasks import translate

    sent_at = timezone.now()  # before the send: a fast worker may start before it returns
    hints = {"batch_key": translation.forward_pass_key, "chars": len(translation.message.text)}
    try:
        translate.apply_async(args=[translation.pk], kwargs=hints, queue=translation.queue)
    except Exception:  # the broker is down or refused: the ledger row keeps the job
        logger.exception("Could not send translation %s to %s; it stays queued", translation.pk, translation.queue)
        Translation.objects.filter(pk=translation.pk, status=TranslationStatus.QUEUED).update(enqueued_at=None)
        return False
    if translation.enqueued_at is None:  # a resend: stamp it now
        Translation.objects.filter(pk=translation.pk).update(enqueued_at=sent_at)
    return True


def translation_resend_unsent(*, older_than_s: float) -> int:
    """Send again the queued rows that never reached a queue (the broker was down at commit).

    A row that is already on a queue is left alone; sending it twice would be harmless (the
    ledger stores one result) but wasteful.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    rows = Translation.objects.filter(status=TranslationStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=cutoff)
    return sum(translation_enqueue(translation=row) for row in rows.select_related("message"))


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
    translation.attempts = 0  # a person decided to try again: a full set of attempts
    translation.queue, translation.engine = route.queue, route.engine
    translation.model_name, translation.precision = route.model, route.precision
    translation.enqueued_at = translation.started_at = translation.finished_at = None
    translation.save()
    transaction.on_commit(lambda: translation_enqueue(translation=translation))
    return translation
