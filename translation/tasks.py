"""Celery tasks of translation: thin, they load ids and call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

# The queue is chosen per job by translation.routing when the job is sent, never here.
TRANSLATE_TASK = "translation.translate"
# Backoff between retries: 2, 4, 8, ... seconds, at most this.
MAX_BACKOFF_S = 60


@shared_task(name=TRANSLATE_TASK, bind=True, acks_late=True)
def translate(self, translation_id: int) -> str:
    from translation.services import translation_run

    if not isinstance(translation_id, int) or isinstance(translation_id, bool):
        # A malformed payload cannot name a row to fail: reject it loudly, never retry it.
        raise ValueError(f"translate expects a Translation id (int), got {translation_id!r}")
    delivery = self.request.delivery_info or {}
    try:
        outcome = translation_run(
            translation_id=translation_id,
            worker=self.request.hostname or "",
            consumed_from=delivery.get("routing_key") or "",
        )
    except Exception as exc:
        # A passing failure (the row is queued again and counts its attempts), or the database
        # itself failing before the row could be claimed: send the job again, to the same
        # queue, later. The ledger caps attempts; this caps deliveries while the database is down.
        countdown = min(2 ** (self.request.retries + 1), MAX_BACKOFF_S)
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.TRANSLATION_TASK_MAX_RETRIES) from exc
    return outcome.value
