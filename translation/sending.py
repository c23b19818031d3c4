"""Sending jobs to the broker: one message per job (``jobs`` dispatch) or the queue's wake-up
(``ledger``), alone or a transaction's together; and sending again the jobs that never left.

``translation.services`` writes the rows and calls these at commit; the reconciler
(``translation.recovery``), the admin and ``manage.py resend_translations`` send again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import NamedTuple

from django.utils import timezone
from kombu.utils.uuid import uuid

from translation import metrics
from translation.models import Translation, TranslationStatus
from translation.routing import route_by_id
from translation.task_events import TRANSLATE_TASK

logger = logging.getLogger(__name__)


# Broker priorities (Redis: 0 is served first). A job handed over from a lost worker, or sent
# again after the broker lost it, goes ahead of the queue's waiting jobs.
PRIORITY_NORMAL = 6
PRIORITY_URGENT = 0


def translation_enqueue(*, translation: Translation, urgent: bool = False, wake=None) -> bool:
    """Send the job to its queue. A broker failure leaves the row queued (and logged).

    The payload is the row's id; the worker reads everything else from the ledger. Hints ride
    along for the worker's batcher: which jobs may share a forward pass, the text's length for
    its token budget, and the route's current batch size and wait (so a worker follows an
    admin's change with its next job, without a restart).

    In ledger dispatch the job's queue is woken instead (``translation.dispatch``); ``wake`` is
    the wake-up the jobs of its transaction share (``commit_wake``), sent once for them all.
    """
    from translation.dispatch import ledger_dispatch, queue_wake

    sent_at = timezone.now()  # before the send: a fast worker may start before it returns
    if ledger_dispatch():  # the row is the job: its queue is woken, once for many jobs
        if wake is not None and wake.sent:  # a job of the same commit woke the queue
            return True
        if not queue_wake(translation.queue):
            metrics.jobs_enqueue_failed.labels(queue=translation.queue).inc()
            Translation.objects.filter(pk=translation.pk, status=TranslationStatus.QUEUED).update(enqueued_at=None)
            return False
        if wake is not None:
            wake.sent = True
        if translation.enqueued_at is None:
            Translation.objects.filter(pk=translation.pk).update(enqueued_at=sent_at)
        return True
    try:
        _send_job(translation, urgent=urgent, sent_at=sent_at)
    except Exception:  # the broker is down or refused: the ledger row keeps the job
        logger.exception("Could not send translation %s to %s; it stays queued", translation.pk, translation.queue)
        _unsent([translation])
        return False
    if translation.enqueued_at is None:  # a resend: stamp it now
        Translation.objects.filter(pk=translation.pk).update(enqueued_at=sent_at)
    return True


def translations_enqueue(translations, *, urgent: bool = False) -> int:
    """Send several jobs; returns how many were sent. In ``jobs`` dispatch their messages go to
    the broker together, in one round trip (kombu's publish batch) instead of one each: the
    jobs of one transaction at its commit, a resend of many. Each job is still a message of its
    own. If the batch fails, every job of it is taken for unsent (its row queued, its
    ``enqueued_at`` cleared for the resend), since the broker may have stored some of them: a
    job sent twice is stored once (the ledger's write is idempotent), a job never sent is lost.
    """
    from translation.dispatch import ledger_dispatch

    translations = list(translations)
    if len(translations) < 2 or ledger_dispatch():
        return sum(translation_enqueue(translation=t, urgent=urgent) for t in translations)
    from cs_portal.celery import app

    sent_at = timezone.now()
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=SEND_BATCH_COMMANDS):
            # Where the transport batches the publishes (Redis), a batch is one connection's: a
            # reconnect fails it whole (every job left unsent), so each queue is declared with its
            # first job only (a fifth of a send's CPU per message). Elsewhere (RabbitMQ), each
            # message declares its queue, as Celery does: after a reconnect the queue is declared
            # again before anything is sent to it.
            declare_once, send = producer.supports_batch_publish, SendSettings.now()
            declared: set[str] = set()
            for translation in translations:
                first = translation.queue not in declared
                declared.add(translation.queue)
                _send_job(translation, urgent=urgent, sent_at=sent_at, producer=producer,
                          declare=None if first or not declare_once else [], send=send)
    except Exception:
        logger.exception("Could not send %d translations (%s, ...); they stay queued", len(translations),
                         translations[0].pk)
        _unsent(translations)
        return 0
    resent = [t.pk for t in translations if t.enqueued_at is None]
    if resent:
        Translation.objects.filter(pk__in=resent).update(enqueued_at=sent_at)
    return len(translations)


# Redis commands buffered before a publish batch goes out (one per job, two with a queue expiry):
# a worker starts on the first 128 jobs while the rest are built.
SEND_BATCH_COMMANDS = 128


class SendSettings(NamedTuple):
    """What a send needs from Celery's settings and the task, read once for a batch of sends (a
    read of Celery's configuration costs as much as a tenth of a send; the task proxy's lookup
    and the sender's node name, 4 % and 2 % of one)."""

    eager: bool
    sent_event: bool
    reply_to: str
    origin: str  # the sending process's node name, as Celery's message carries it
    ignore_result: bool
    # The worker's task these sends run in, if any (a job requested by a task, as a pool thread
    # runs it): its id is their parent, its root their root, as Celery's send_task takes them.
    parent_id: str | None = None
    root_id: str | None = None

    @classmethod
    def now(cls) -> SendSettings:
        from celery.utils.nodenames import anon_nodename

        from cs_portal.celery import app
        from translation.tasks import translate

        parent = app.current_worker_task
        parent_id = parent.request.id if parent is not None else None
        root_id = (parent.request.root_id or parent_id) if parent is not None else None
        return cls(bool(app.conf.task_always_eager), bool(app.conf.task_send_sent_event), app.thread_oid,
                   anon_nodename(), translate.ignore_result, parent_id, root_id)


def _send_job(translation: Translation, *, urgent: bool, sent_at, producer=None, declare=None,
              send: SendSettings | None = None) -> None:
    """One job's message (``jobs`` dispatch). ``declare``: the entities to declare first (default:
    the job's queue, as Celery declares it; ``[]``: none, its queue declared already)."""
    send = send or SendSettings.now()
    hints = {"batch_key": translation.forward_pass_key, "chars": len(translation.source_text)}
    route = route_by_id(translation.route_id)
    if route is not None:
        hints.update(max_batch=route.max_batch_size, max_wait_ms=route.max_wait_ms)
    if urgent:
        hints["urgent"] = True
    # When it was queued (epoch seconds): its wait for batch-mates counts from then, the send and
    # the delivery included, as in ledger dispatch.
    hints["queued_at"] = round((translation.enqueued_at or sent_at).timestamp(), 3)
    priority = PRIORITY_URGENT if urgent else PRIORITY_NORMAL
    # What Flower shows of the arguments: plain repr of small ints and strings, which Celery's
    # default (saferepr, built for arbitrary objects) spends a quarter of a send on.
    shown = {"argsrepr": f"[{translation.pk}]", "kwargsrepr": repr(hints)}
    if send.eager:  # run here, as apply_async runs it (a development setting)
        from translation.tasks import translate

        translate.apply_async(args=[translation.pk], kwargs=hints, queue=translation.queue, priority=priority, **shown)
        return
    # Celery's own message and send (what ``apply_async`` ends in, for a task sent outside a
    # task), without what ``apply_async`` does first for any task (routing, annotations, the
    # task's options, the result object: none of them used here): 90 µs of CPU per message
    # against 240 (docs/benchmarks.md). The same message: protocol 2, its headers and
    # properties, the queue and priority below, the ``before/after_task_publish`` signals, the
    # publish retry policy, a ``task-sent`` event where ``task_send_sent_event`` asks for one.
    from cs_portal.celery import app

    task_id = uuid()
    message = app.amqp.create_task_message(
        task_id, TRANSLATE_TASK, [translation.pk], hints, reply_to=send.reply_to,
        create_sent_event=send.sent_event, root_id=send.root_id or task_id, parent_id=send.parent_id,
        ignore_result=send.ignore_result,
        origin=send.origin, **shown,
    )
    if producer is None:  # a send of its own; a batch's sends share the batch's producer
        with app.producer_or_acquire() as producer:
            _publish(app, producer, message, translation.queue, priority, declare)
    else:
        _publish(app, producer, message, translation.queue, priority, declare)


def _publish(app, producer, message, queue: str, priority: int, declare) -> None:
    with producer.connection._reraise_as_library_errors():  # broker errors as kombu's, as apply_async raises them
        app.amqp.send_task_message(producer, TRANSLATE_TASK, message, queue=queue, priority=priority, declare=declare)


def _unsent(translations) -> None:
    """Jobs the broker did not take: counted, and their rows left queued with no send stamp, so
    the resend finds them ("queued, never sent" stays visible)."""
    for translation in translations:
        metrics.jobs_enqueue_failed.labels(queue=translation.queue).inc()
    Translation.objects.filter(
        pk__in=[t.pk for t in translations], status=TranslationStatus.QUEUED
    ).update(enqueued_at=None)


def translation_resend_unsent(*, older_than_s: float) -> int:
    """Send again the queued rows that never reached a queue (the broker was down at commit).

    A row that is already on a queue is left alone; sending it twice would be harmless (the
    ledger stores one result) but wasteful.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    rows = Translation.objects.filter(status=TranslationStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=cutoff)
    return translations_enqueue(rows.select_related("message"))
