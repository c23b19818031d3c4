"""Writes to the Translation ledger on the sending side: request, enqueue, resend, retry.

A job's life: ``translation_request`` writes a queued row and, on commit, ``translation_enqueue``
sends its id to the route's queue. A worker runs it through ``translation.execution``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import NamedTuple

from django.db import transaction
from django.utils import timezone

from translation import backpressure, errors, metrics
from translation.models import ANY_LANGUAGE, LanguageRoute, Translation, TranslationStatus
from translation.routing import Route, route_by_id, route_for

logger = logging.getLogger(__name__)

NOT_RETRYABLE = "Translation {id} is {status}; only failed translations can be retried."
INPUT_TOO_LONG = "The message has {length} characters; route {route} accepts at most {limit}."


def _route_or_reason(translation: Translation, text: str, sticky_key) -> tuple[Route | None, str]:
    """The route a job takes (A/B variant and fallback applied), or why it cannot be sent."""
    source, target = translation.source_language, translation.target_language
    try:
        route = route_for(source, target, sticky_key=sticky_key)
    except errors.NoRoute as exc:
        return None, exc.message
    if len(text) > route.max_input_chars:
        return route, INPUT_TOO_LONG.format(length=len(text), route=route, limit=route.max_input_chars)
    return route, ""


def _on_commit(translation: Translation, *, send: bool) -> None:
    """Once the transaction commits: count the request (and its failure when it failed at once;
    a request rolled back, a 429 say, is not counted), and send the job when ``send``."""
    labels = metrics.job_labels(
        route_id=translation.route_id, source=translation.source_language, target=translation.target_language,
        model=translation.model_name,
    )
    failed = translation.status == TranslationStatus.FAILED
    kind = metrics.FAILED_NO_ROUTE if translation.route_id is None else metrics.FAILED_INPUT_TOO_LONG
    from translation.dispatch import commit_wake, ledger_dispatch

    ledger = send and ledger_dispatch()
    shared = commit_wake(translation.queue) if ledger else None
    sends = _commit_sends(translation) if send and not ledger else None

    def committed() -> None:
        metrics.jobs_requested.labels(**labels).inc()
        if failed:
            metrics.jobs_failed.labels(**labels, reason=kind).inc()
        if sends is not None:
            sends.send()
        elif send:
            translation_enqueue(translation=translation, wake=shared)

    transaction.on_commit(committed)


class CommitSends:
    """The job messages of one transaction, sent together at its commit (``translations_enqueue``:
    one round trip to the broker for them all). Each job's on-commit callback holds it; the
    first to run sends every job, and the others have nothing left to send.

    A job saved in a savepoint that was rolled back is in the list but not in the database; the
    rows are looked up before a send of several, so no message names a row that does not exist.
    """

    __slots__ = ("jobs", "sent", "hooks")

    def __init__(self, hooks: list) -> None:
        self.jobs: list[Translation] = []
        self.sent = False
        self.hooks = hooks  # the connection's list of on-commit callbacks it was made for

    def send(self) -> None:
        if self.sent:
            return
        self.sent = True
        jobs = list({job.pk: job for job in self.jobs}.values())  # a row once, as last saved
        if len(jobs) > 1:  # one query, against a round trip saved per job
            try:
                stored = set(Translation.objects.filter(pk__in=[job.pk for job in jobs]).values_list("pk", flat=True))
                jobs = [job for job in jobs if job.pk in stored]
            except Exception:  # the database went away after the commit: send them all
                logger.warning("Could not look up %d committed jobs before sending them", len(jobs), exc_info=True)
        translations_enqueue(jobs)


def _commit_sends(translation: Translation) -> CommitSends:
    """The send of the transaction open now, with ``translation`` added. Django gives each
    transaction a new list of on-commit callbacks (and a savepoint rolled back, a new list of the
    callbacks left), so a send made for another list, committed or rolled back, is not reused."""
    connection = transaction.get_connection()
    sends = connection.__dict__.get("translation_commit_sends")
    if sends is None or sends.sent or sends.hooks is not connection.run_on_commit:
        sends = connection.__dict__["translation_commit_sends"] = CommitSends(connection.run_on_commit)
    sends.jobs.append(translation)
    return sends


def _sticky_key(translation: Translation):
    """The conversation a job belongs to (for its A/B variant), through a back-translation's origin."""
    message = translation.message if translation.message_id else None
    if message is None and translation.back_translation_of_id:
        origin = translation.back_translation_of
        message = origin.message if origin.message_id else None
    return message.conversation_id if message is not None else None


def _stamp_route(translation: Translation, route: Route) -> None:
    translation.route_id, translation.variant = route.id, route.variant
    translation.queue, translation.engine = route.queue, route.engine
    translation.model_name, translation.precision = route.model, route.precision


def _fail_at_once(translation: Translation, reason: str) -> None:
    translation.status = TranslationStatus.FAILED
    translation.failure_reason = reason
    translation.finished_at = timezone.now()


def translation_request(*, message, target_language: str, back_translate: bool = False) -> Translation:
    """Record that ``message`` needs a translation into ``target_language``; send it on commit.

    A pair without a route is recorded as failed with the reason, never dropped. With
    ``back_translate``, the output is translated back once done (an agent's draft reply).
    """
    translation = Translation(
        message=message, source_language=message.language, target_language=target_language,
        back_translate=back_translate,
    )
    route, reason = _route_or_reason(translation, message.text, message.conversation_id)
    if route is not None and not reason:
        # Past the route's limit of waiting jobs, its fallback takes the job, or Overloaded
        # (429) rolls the caller's transaction back: the message is not stored either.
        route = backpressure.route_with_room(route)
    return _record(translation, route, reason)


def _record(translation: Translation, route: Route | None, reason: str) -> Translation:
    """Stamp the route and save the row: failed at once with ``reason``, or queued and sent
    when the transaction commits."""
    if route is not None:
        _stamp_route(translation, route)
    if reason:
        _fail_at_once(translation, reason)
        translation.save()
        _on_commit(translation, send=False)
        logger.warning("Translation %s failed at once: %s", translation.pk, reason)
        return translation
    # Stamped now, sent at commit: one statement per job less on the hot path; a failed send
    # clears it again (translation_enqueue), so "queued, never sent" stays visible.
    translation.enqueued_at = timezone.now()
    translation.save()
    _on_commit(translation, send=True)
    return translation


def back_translation_request(*, of: Translation, text: str) -> Translation:
    """Translate ``text`` (``of``'s output, or its correction) back into ``of``'s source language,
    so the agent who wrote the source can check what the customer will read."""
    translation = Translation(
        input_text=text, source_language=of.target_language, target_language=of.source_language,
        back_translation_of=of,
    )
    conversation_id = of.message.conversation_id if of.message_id else None
    route, reason = _route_or_reason(translation, text, conversation_id)
    return _record(translation, route, reason)


def back_translations_request(translation_ids) -> int:
    """Back-translations of the done rows among ``translation_ids`` that asked for one."""
    rows = Translation.objects.filter(
        pk__in=translation_ids, back_translate=True, status=TranslationStatus.DONE
    ).select_related("message")
    count = 0
    with transaction.atomic():
        for row in rows:
            if not row.back_translations.exists():
                back_translation_request(of=row, text=row.final_text)
                count += 1
    return count


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
    """What Celery's settings say about sending a task, read once for a batch of sends (each
    read of Celery's configuration costs as much as a tenth of a send)."""

    eager: bool
    sent_event: bool
    reply_to: str

    @classmethod
    def now(cls) -> SendSettings:
        from cs_portal.celery import app

        return cls(bool(app.conf.task_always_eager), bool(app.conf.task_send_sent_event), app.thread_oid)


def _send_job(translation: Translation, *, urgent: bool, sent_at, producer=None, declare=None,
              send: SendSettings | None = None) -> None:
    """One job's message (``jobs`` dispatch). ``declare``: the entities to declare first (default:
    the job's queue, as Celery declares it; ``[]``: none, its queue declared already)."""
    from kombu.utils.uuid import uuid

    from cs_portal.celery import app
    from translation.tasks import translate

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
        translate.apply_async(args=[translation.pk], kwargs=hints, queue=translation.queue, priority=priority, **shown)
        return
    # Celery's own message and send (what ``apply_async`` ends in, for a task sent outside a
    # task), without what ``apply_async`` does first for any task (routing, annotations, the
    # task's options, the result object: none of them used here): 90 µs of CPU per message
    # against 240 (docs/benchmarks.md). The same message: protocol 2, its headers and
    # properties, the queue and priority below, the ``before/after_task_publish`` signals, the
    # publish retry policy, a ``task-sent`` event where ``task_send_sent_event`` asks for one.
    task_id = uuid()
    message = app.amqp.create_task_message(
        task_id, translate.name, [translation.pk], hints, reply_to=send.reply_to,
        create_sent_event=send.sent_event, root_id=task_id, ignore_result=translate.ignore_result,
        **shown,
    )
    with app.producer_or_acquire(producer) as producer:
        # Broker errors as kombu's, as apply_async raises them.
        with producer.connection._reraise_as_library_errors():
            app.amqp.send_task_message(producer, translate.name, message, queue=translation.queue, priority=priority,
                                       declare=declare)


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


def translation_sample(*, route: LanguageRoute, text: str, source_language: str = "") -> Translation:
    """Send ``text`` through ``route`` (enabled or not: a route can be tried before it is
    switched on), along its real queue, as a ledger row without a message."""
    from translation.languages import is_known

    text = (text or "").strip()
    if not text:
        raise errors.ApplicationError("The sample text is empty.")
    if len(text) > route.max_input_chars:
        raise errors.ApplicationError(
            INPUT_TOO_LONG.format(length=len(text), route=route, limit=route.max_input_chars)
        )
    source = source_language if route.source_language == ANY_LANGUAGE else route.source_language
    if not is_known(source):
        raise errors.ApplicationError(
            f"Route {route} takes any source language: choose the sample's language (an ISO 639-1 code such as 'es')."
        )
    translation = Translation(source_language=source, target_language=route.target_language, input_text=text)
    _stamp_route(translation, Route.of(route))
    translation.enqueued_at = timezone.now()
    translation.save()
    transaction.on_commit(lambda: translation_enqueue(translation=translation))
    return translation


@transaction.atomic
def translation_retry(*, translation: Translation) -> Translation:
    """Send a failed translation again, along its current route."""
    translation = Translation.objects.select_for_update(of=("self",)).select_related("message").get(pk=translation.pk)
    if translation.status != TranslationStatus.FAILED:
        raise errors.ApplicationError(
            NOT_RETRYABLE.format(id=translation.pk, status=translation.get_status_display()), code="not_retryable"
        )
    if translation.is_sample:
        raise errors.ApplicationError(f"Translation {translation.pk} is a route sample; send a new sample instead.")
    route, reason = _route_or_reason(translation, translation.source_text, _sticky_key(translation))
    if reason:
        raise errors.ApplicationError(f"Translation {translation.pk} cannot be retried: {reason}", code="no_route")
    translation.status, translation.failure_reason, translation.text = TranslationStatus.QUEUED, "", ""
    translation.attempts = 0  # a person decided to try again: a full set of attempts
    _stamp_route(translation, route)
    translation.started_at = translation.finished_at = None
    translation.enqueued_at = timezone.now()  # sent at commit; a failed send clears it (as for a new request)
    translation.save()
    _on_commit(translation, send=True)
    return translation


ROUTE_KEYS = {
    "source": "source_language", "target": "target_language", "queue": "queue", "engine": "engine",
    "model": "model_name", "precision": "precision", "variant": "variant", "traffic_share": "traffic_share",
    "adapter": "adapter", "max_batch_size": "max_batch_size", "max_wait_ms": "max_wait_ms",
    "max_input_chars": "max_input_chars", "max_queued": "max_queued", "enabled": "enabled", "note": "note",
}


@transaction.atomic
def routes_import(entries: list[dict], *, replace: bool = False) -> list[LanguageRoute]:
    """Create routes from plain entries (``TRANSLATION_ROUTES``, a JSON file), each validated as
    the admin validates it. ``replace`` deletes the routes there were first. All or nothing:
    the first invalid entry raises ``ApplicationError`` naming it, and nothing is written."""
    from django.core.exceptions import ValidationError

    from translation.routing import share_problems

    if not isinstance(entries, list):
        raise errors.ApplicationError("Routes must be a JSON list of objects.")
    if replace:
        LanguageRoute.objects.filter(fallback__isnull=False).update(fallback=None)
        LanguageRoute.objects.all().delete()
    created = []
    for index, entry in enumerate(entries):
        where = f"routes[{index}]"
        if not isinstance(entry, dict):
            raise errors.ApplicationError(f"{where}: expected an object, got {type(entry).__name__}.")
        unknown = sorted(set(entry) - set(ROUTE_KEYS) - {"fallback"})
        if unknown:
            raise errors.ApplicationError(f"{where}: unknown keys {unknown}; known: {sorted([*ROUTE_KEYS, 'fallback'])}.")
        empty = sorted(key for key, value in entry.items() if value is None)
        if empty:
            raise errors.ApplicationError(f"{where}: {empty} must not be null (leave a key out for its default).")
        route = LanguageRoute(**{ROUTE_KEYS[key]: value for key, value in entry.items() if key != "fallback"})
        try:
            route.full_clean()
        except ValidationError as exc:
            details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            raise errors.ApplicationError(f"{where}: {details}") from exc
        route.save()
        created.append(route)
    # Fallbacks name another entry of the same list by its position, once every entry exists.
    for index, entry in enumerate(entries):
        if "fallback" not in entry:
            continue
        target = entry["fallback"]
        if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < len(created):
            raise errors.ApplicationError(
                f"routes[{index}]: fallback must be the position of another route in this list (0..{len(created) - 1})."
            )
        route = created[index]
        route.fallback = created[target]
        try:
            route.full_clean()
        except ValidationError as exc:
            details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            raise errors.ApplicationError(f"routes[{index}]: {details}") from exc
        route.save(update_fields=["fallback", "updated_at"])
    problems = share_problems(LanguageRoute.objects.all())
    if problems:
        raise errors.ApplicationError(" ".join(problems))
    return created
