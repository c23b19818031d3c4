"""Celery tasks of translation: thin, they load ids and call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

# The queue is chosen per job by translation.routing when the job is sent, never here.
TRANSLATE_TASK = "translation.translate"


@shared_task(name=TRANSLATE_TASK, bind=True, acks_late=True)
def translate(self, translation_id: int) -> str:
    from translation.services import translation_fail, translation_requeue, translation_run

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
        reason = f"{type(exc).__name__}: {exc}"
        attempt = self.request.retries + 1
        if attempt >= settings.TRANSLATION_MAX_ATTEMPTS:
            translation_fail(translation_id=translation_id, reason=f"Gave up after {attempt} attempts. {reason}")
            raise
        translation_requeue(translation_id=translation_id, reason=f"Attempt {attempt} failed, retrying. {reason}")
        raise self.retry(exc=exc, countdown=2**attempt)
    return outcome.value
