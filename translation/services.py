"""Writes to the Translation ledger on the sending side: request, retry, sample, route import.

A job's life: ``translation_request`` writes a queued row and, on commit, ``translation_enqueue``
(``translation.sending``) sends its id to the route's queue. A worker runs it through
``translation.execution``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from translation import backpressure, errors, metrics
from translation.models import ANY_LANGUAGE, LanguageRoute, Translation, TranslationStatus
from translation.routing import Route, route_for
from translation.selectors import translations_stored
from translation.sending import translation_enqueue, translations_enqueue

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
                stored = translations_stored(job.pk for job in jobs)
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
    translation.started_at = translation.finished_at = translation.retry_at = None
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


@dataclass
class Retried:
    """What a retry of many failed translations did: how many were sent again, the reasons the
    rest were refused (each with its count), and how many matching rows it left for later."""

    sent: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    left: int = 0


def translations_retry(rows, *, limit: int, progress: Callable[[Retried], None] | None = None) -> Retried:
    """``translation_retry`` for the failed rows of ``rows`` (a queryset), oldest first, at most
    ``limit`` of them, each in its own transaction (a refusal, such as a route sample's, leaves
    the others alone); ``progress`` hears the count every 100 rows."""
    failed = rows.filter(status=TranslationStatus.FAILED)
    ids = list(failed.order_by("pk").values_list("pk", flat=True)[: limit + 1])
    result = Retried(left=failed.count() - limit if len(ids) > limit else 0)  # counted before they change
    for n, pk in enumerate(ids[:limit], start=1):
        try:
            translation_retry(translation=Translation(pk=pk))
            result.sent += 1
        except errors.ApplicationError as exc:
            reason = exc.message.replace(f"Translation {pk} ", "This translation ", 1)
            result.refused[reason] = result.refused.get(reason, 0) + 1
        if progress is not None and n % 100 == 0:
            progress(result)
    return result


def _mistyped(entry: dict) -> list[str]:
    """The keys of a route entry whose JSON value is of the wrong kind: the model's fields would
    take ``2.9`` as 2, ``true`` as 1 and an object as its text, where the admin's form refuses
    them."""
    from django.db import models as fields

    problems = []
    for key, value in entry.items():
        if key == "fallback":
            continue
        field = LanguageRoute._meta.get_field(ROUTE_KEYS[key])
        if isinstance(field, fields.BooleanField):
            kind, fits = "true or false", isinstance(value, bool)
        elif isinstance(field, fields.IntegerField):
            kind, fits = "a whole number", isinstance(value, int) and not isinstance(value, bool)
        else:  # text
            kind, fits = "a string", isinstance(value, str)
        if not fits:
            problems.append(f"{key} must be {kind}, not {json.dumps(value)[:60]}")
    return problems


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
        mistyped = _mistyped(entry)
        if mistyped:
            raise errors.ApplicationError(f"{where}: " + "; ".join(mistyped) + ".")
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
