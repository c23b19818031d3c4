"""Running translation jobs on the worker: claim rows, translate in batches, store the results.

``translation_run_batch`` is the one path, for a batch of one or of 128: one transaction claims
every row (each claim an attempt token), each group of jobs that shares a forward pass goes to
its engine in one call (with a poisoned input isolated by halving), and each group's results
are stored with one UPDATE that only touches rows whose claim is still the latest. A job
delivered twice therefore never duplicates or overwrites a done translation.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from enum import Enum

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from translation import metrics
from translation.batching import run_isolated
from translation.claims import GAVE_UP, Delivery, Job, _computing_release, _fail_rows, translations_claim
from translation.engines import (
    EngineError,
    EngineLost,
    EngineSpec,
    TokenUsage,
    TranslationEngine,
    engine_for,
    translate_timed,
)
from translation.models import Translation, TranslationStatus
from translation.selectors import glossary_for

logger = logging.getLogger(__name__)

EMPTY_OUTPUT = "The model produced an empty translation."
RETRYING = "Attempt {attempt} failed, retrying. {reason}"
LOCKED = "Its ledger row is locked by another worker's transaction; sent again later."


class RunOutcome(Enum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # finished, gone, or stored by a later claim: a duplicate delivery


class TransientFailure(Exception):
    """The job failed for a passing reason; the row is queued again and the job should be retried."""


def _latest_claims(jobs: list[Job]):
    """The jobs' rows, only while each job's claim is the latest: a later claim supersedes it."""
    condition = Q()
    for job in jobs:
        condition |= Q(pk=job.id, claims=job.claim)
    return Translation.objects.filter(condition, status=TranslationStatus.RUNNING)


def _store_done(results: list[tuple[Job, str]], *, now: datetime, batch_size: int, forward_ms: float | None) -> set[int]:
    """``UPDATE ... FROM (VALUES (id, claim, text), ...) ... RETURNING id``: each row is stored
    only while its claim is the latest (same claim count, still running), and the statement says
    which it stored. One statement of plain SQL: Django's ``Case``/``When`` and an OR of 128
    conditions cost several milliseconds of CPU per batch to build. PostgreSQL and SQLite (3.35
    and later: checked at start-up, ``translation.checks``) both take it; both name a VALUES
    list's columns column1, column2, ... (on PostgreSQL the rows come as three arrays instead)."""
    from django.db import connection

    results = list(dict((job.id, (job, text)) for job, text in reversed(results)).values())  # one text per row: the first
    quote = connection.ops.quote_name
    table = quote(Translation._meta.db_table)
    column = {name: quote(Translation._meta.get_field(name).column) for name in
              ("id", "claims", "status", "text", "failure_reason", "finished_at", "updated_at", "batch_size",
               "forward_ms")}
    stamp = connection.ops.adapt_datetimefield_value(now)
    if connection.vendor == "postgresql":
        # Three arrays, not three placeholders per row: the statement's text is the same for
        # every batch, so the driver parses it once (a 128-row VALUES list, 384 placeholders, is
        # over psycopg's 4 KB cache and was parsed again at every batch).
        source = ("unnest(CAST(%s AS bigint[]), CAST(%s AS integer[]), CAST(%s AS text[])) "
                  "AS v(column1, column2, column3)")
        values: list = [[job.id for job, _ in results], [job.claim for job, _ in results],
                        [text for _, text in results]]
    else:
        source = "(VALUES {}) AS v".format(", ".join(["(CAST(%s AS bigint), CAST(%s AS integer), CAST(%s AS text))"] * len(results)))
        values = [value for job, text in results for value in (job.id, job.claim, text)]
    sql = (
        f"UPDATE {table} SET {column['status']} = %s, {column['text']} = v.column3, {column['failure_reason']} = '', "
        f"{column['finished_at']} = %s, {column['updated_at']} = %s, {column['batch_size']} = %s, "
        f"{column['forward_ms']} = %s "
        f"FROM {source} "
        f"WHERE {table}.{column['id']} = v.column1 AND {table}.{column['claims']} = v.column2 "
        f"AND {table}.{column['status']} = %s "
        f"RETURNING {column['id']}"  # unqualified: SQLite 3.35 refuses a table name here
    )
    params: list = [TranslationStatus.DONE, stamp, stamp, batch_size, forward_ms, *values, TranslationStatus.RUNNING]
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {pk for (pk,) in cursor.fetchall()}


def translations_complete(results: list[tuple[Job, str]], *, batch_size: int | None = None,
                          forward_ms: float | None = None) -> set[int]:
    """Store the results with one UPDATE; returns the ids stored (the others were superseded).

    ``batch_size`` is the number of jobs in the forward pass that made them, ``forward_ms`` the
    milliseconds its model call took (unknown: None).
    """
    if not results:
        return set()
    now = timezone.now()
    # A draft's result and its back-translation's request commit together: were the request to
    # fail after the store (the database lost in between), the store's retry would find the row
    # done already and request nothing, and the agent would never get the text to check.
    drafts = any(job.back_translate for job, _ in results)
    with transaction.atomic() if drafts else nullcontext():
        done = _store_done(results, now=now, batch_size=batch_size or len(results), forward_ms=forward_ms)
        wanted = [job.id for job, _ in results if job.back_translate and job.id in done]
        if wanted:  # an agent's draft reply: its back-translation, for the agent to check
            _back_translations_request(wanted)
    _count_done([job for job, _ in results if job.id in done], now)
    return done


def _back_translations_request(ids: list[int]) -> None:
    """Request the drafts' back-translations with their store. A database error undoes both (the
    store is retried); any other error leaves the drafts stored without one, logged: the agent
    can still correct and send them (a correction requests its own)."""
    from django.db import DatabaseError

    from translation.services import back_translations_request

    try:
        with transaction.atomic():
            back_translations_request(ids)
    except DatabaseError:
        raise
    except Exception:
        logger.exception("Could not request the back-translations of drafts %s", ids)


def _count_done(jobs: list[Job], now) -> None:
    """The metrics of stored jobs, each counter's labels looked up once per label set (per job,
    the lookups were about 40 % of a 128-job store's CPU)."""
    same: dict[tuple, list[Job]] = {}
    for job in jobs:
        same.setdefault((job.route_id, job.source, job.target, job.spec.model), []).append(job)
    for group in same.values():
        labels = group[0].labels
        metrics.jobs_done.labels(**labels).inc(len(group))
        compute, end_to_end = metrics.compute_seconds.labels(**labels), metrics.end_to_end_seconds.labels(**labels)
        for job in group:
            if job.claimed_at is not None:
                compute.observe(max(0.0, (now - job.claimed_at).total_seconds()))
            if job.requested_at is not None:
                end_to_end.observe(max(0.0, (now - job.requested_at).total_seconds()))


def translation_complete(*, job: Job, text: str) -> bool:
    return job.id in translations_complete([(job, text)])


def translation_fail(*, translation_id: int, reason: str, job: Job | None = None) -> bool:
    """Fail the row visibly with ``reason`` (only ``job``'s claim, when given); never a done row."""
    rows = _latest_claims([job]) if job else Translation.objects.filter(pk=translation_id).exclude(status=TranslationStatus.DONE)
    return bool(_fail_rows(rows, reason))


def translation_requeue(*, job: Job, reason: str, retry: bool = True) -> bool:
    """Put ``job``'s row back to queued before a retry, keeping the last error visible. With
    ``retry`` its next attempt waits ``retry_delay_s`` (a passing failure); without, any worker
    may take it at once (its batch never ran)."""
    from datetime import timedelta

    from translation.dispatch import retry_delay_s

    now = timezone.now()
    retry_at = now + timedelta(seconds=retry_delay_s(job.attempt)) if retry else None
    return bool(
        _latest_claims([job]).update(
            status=TranslationStatus.QUEUED, failure_reason=reason[:2000], updated_at=now, retry_at=retry_at,
            attempts=attempts_given_back(),
        )
    )


def attempts_given_back():
    """``attempts`` of a row going back to queued: a claim whose batch never started (it waited
    in a batcher, ledger dispatch) gives its attempt back, so jobs waiting behind a batch that
    kept killing its engine are not failed for it."""
    from django.db.models import Case, PositiveIntegerField, When

    return Case(When(status=TranslationStatus.RUNNING, started_at__isnull=True, then=F("attempts") - 1),
                default=F("attempts"), output_field=PositiveIntegerField())


def _translate(engine, texts: list[str], source: str, target: str, glossary, meanwhile: Callable[[], None]):
    """``engine.translate_with_usage``, running ``meanwhile`` while the model computes where the
    engine computes in another process (``workers.engine_process``, which times the model call
    itself), else before; the usage's ``seconds`` are the model call's alone."""
    overlapping = getattr(engine, "translate_with_usage_while", None)
    if overlapping is not None:
        return overlapping(texts, source, target, glossary, meanwhile=meanwhile)
    meanwhile()
    return translate_timed(engine, texts, source, target, glossary)


def _settle(job: Job, result: str | Exception) -> RunOutcome | TransientFailure | None:
    """Record a job's failure; None means its text is to be stored."""
    if isinstance(result, EngineError):
        translation_fail(translation_id=job.id, reason=str(result), job=job)
        metrics.jobs_failed.labels(**job.labels, reason=metrics.FAILED_ENGINE_ERROR).inc()
        return RunOutcome.FAILED
    if isinstance(result, Exception):
        reason = f"{type(result).__name__}: {result}"
        if job.attempt >= settings.TRANSLATION_MAX_ATTEMPTS:
            translation_fail(translation_id=job.id, reason=GAVE_UP.format(attempts=job.attempt, reason=reason), job=job)
            metrics.jobs_failed.labels(**job.labels, reason=metrics.FAILED_GAVE_UP).inc()
            return RunOutcome.FAILED
        translation_requeue(job=job, reason=RETRYING.format(attempt=job.attempt, reason=reason))
        metrics.jobs_retried.labels(**job.labels).inc()
        return TransientFailure(reason)
    if not result:
        translation_fail(translation_id=job.id, reason=EMPTY_OUTPUT, job=job)
        metrics.jobs_failed.labels(**job.labels, reason=metrics.FAILED_EMPTY_OUTPUT).inc()
        return RunOutcome.FAILED
    return None


ENGINE_LOST = "Its forward pass stopped the engine ({reason}); it runs alone from now on."
ENGINE_GONE = "The engine had stopped before its forward pass ({reason}); sent again."


def _engine_lost(group: list[Job], lost: EngineLost) -> dict[int, RunOutcome | TransientFailure]:
    """The engine stopped during (or before) a group's forward pass. A job that ran alone when it
    stopped is the likely cause: its attempt counts, and it fails once out of attempts. Jobs that
    shared the pass are suspects, not culprits: their attempt is given back and each runs alone
    from then on (an input that stops the engine then fails alone, its neighbours are stored).
    Jobs whose pass never started (the engine was gone) get their attempt back."""
    reason = f"{type(lost).__name__}: {lost}"
    if lost.during_call and len(group) == 1:
        return {group[0].id: _settle(group[0], lost)}
    _latest_claims(group).update(  # a job already alone is in a group of its own
        status=TranslationStatus.QUEUED, updated_at=timezone.now(), retry_at=None, attempts=F("attempts") - 1,
        runs_alone=lost.during_call or group[0].alone,
        failure_reason=(ENGINE_LOST if lost.during_call else ENGINE_GONE).format(reason=reason)[:2000],
    )
    for job in group:
        metrics.jobs_retried.labels(**job.labels).inc()
    if lost.during_call:
        logger.warning("The engine stopped during a forward pass of %d job(s) (%s); each runs alone from now on",
                       len(group), reason)
    return {job.id: TransientFailure(reason) for job in group}


def _while_database_returns(store: Callable[[], set[int]]) -> set[int]:
    """Store computed results, retrying with backoff while the database is unreachable: the jobs
    stay unacknowledged meanwhile, and their results are kept, not computed again. Gives up
    after ``TRANSLATION_STORE_RETRY_S`` (the jobs are then sent again, as after any failure)."""
    import time

    from django.db import InterfaceError, OperationalError, close_old_connections, connection

    deadline = time.monotonic() + settings.TRANSLATION_STORE_RETRY_S
    delay = 0.25
    while True:
        try:
            return store()
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("The database is unreachable; storing the batch's results again in %.2f s", delay)
            connection.close()
            time.sleep(delay)
            close_old_connections()
            delay = min(delay * 2, 5.0)


def _run_claimed(
    deliveries: list[Delivery], jobs: dict[int, Job], engines: Callable[[EngineSpec], TranslationEngine],
    start: Callable[[], None] = lambda: None,
) -> dict[int, RunOutcome | TransientFailure]:
    """Translate the claimed ``jobs`` group by group and store each group's results. ``start``
    stamps the start of jobs claimed ahead: while the first forward pass computes."""
    groups: dict[tuple, list[Job]] = defaultdict(list)
    for job in dict.fromkeys(jobs[d.translation_id] for d in deliveries if d.translation_id in jobs):
        key = (job.spec, job.source, job.target)
        groups[(*key, job.id) if job.alone else key].append(job)  # in the batcher's order: by length
    outcomes: dict[int, RunOutcome | TransientFailure] = {}
    unclaimed = [d.translation_id for d in deliveries if d.translation_id not in jobs]
    if unclaimed:  # unfinished yet not claimed: locked by another transaction; sent again later
        for pk in Translation.objects.filter(pk__in=unclaimed, status=TranslationStatus.QUEUED).values_list("pk", flat=True):
            outcomes[pk] = TransientFailure(LOCKED)
    for (spec, source, target, *_), group in groups.items():
        try:
            engine = engines(spec)
        except Exception as exc:  # the model does not load: every job of the group, the same way
            results: list = [exc] * len(group)
            forward_ms = None
        else:
            glossary = glossary_for(target)
            usage = TokenUsage()  # the calls that answered, added up (several where a bad input is isolated)

            def translate(texts, engine=engine, usage=usage, pair=(source, target), glossary=glossary):
                outputs, used = _translate(engine, texts, *pair, glossary, meanwhile=start)
                usage.add(used)
                return outputs

            try:
                results = run_isolated([job.text for job in group], translate, fatal=(EngineLost,))
            except EngineLost as lost:  # no further call can answer: nothing to isolate by halving
                start()
                outcomes.update(_engine_lost(group, lost))
                continue
            forward_ms = round(usage.seconds * 1000, 1) if usage.seconds else None  # None: no call answered
            metrics.batch_size.labels(model=spec.model).observe(len(group))
            if usage.seconds:
                metrics.forward_seconds.labels(model=spec.model).observe(usage.seconds)
            token_labels = {"model": spec.model, "source": source, "target": target}
            metrics.input_tokens.labels(**token_labels).inc(usage.input_tokens)
            metrics.output_tokens.labels(**token_labels).inc(usage.output_tokens)
        start()  # no forward pass ran (the model did not load): the attempts still count
        to_store = []
        for job, result in zip(group, results, strict=True):
            settled = _settle(job, result)
            if settled is None:
                to_store.append((job, result))
            else:
                outcomes[job.id] = settled
        stored = _while_database_returns(partial(translations_complete, to_store, batch_size=len(group),
                                                 forward_ms=forward_ms))
        outcomes.update({job.id: RunOutcome.DONE if job.id in stored else RunOutcome.SKIPPED for job, _ in to_store})
    return outcomes


def translation_run_batch(
    deliveries: list[Delivery | Job], *, engines: Callable[[EngineSpec], TranslationEngine] = engine_for
) -> list[RunOutcome | TransientFailure]:
    """Run a batch of deliveries; one outcome per delivery, in order.

    A delivery is a broker's message naming a row, claimed here, or a ``Job`` claimed already
    (ledger dispatch claims rows before they wait for their batch). ``engines`` gives the
    engine of a spec: loaded in this process by default, or a worker's engine process. A
    TransientFailure in the list means: the row is queued again, send the job again later.
    """
    from translation.dispatch import BatchStart

    start = BatchStart([item for item in deliveries if isinstance(item, Job)])
    claimed = {job.id: job for job in start.jobs}
    deliveries = [
        Delivery(item.id, "", "") if isinstance(item, Job) else item for item in deliveries
    ]
    jobs = translations_claim([d for d in deliveries if d.translation_id not in claimed], computing=True)
    try:
        outcomes = _run_claimed(deliveries, {**jobs, **claimed}, engines, start)
    except Exception as exc:
        # Claimed here and not settled (the database went away past TRANSLATION_STORE_RETRY_S, a
        # read between claim and store failed): back to queued, or a live worker's claim would
        # hold them running, skipped by every other worker, until its process ends. The caller
        # sends the jobs again. (Ledger claims are given back by their intake.)
        _claims_give_back(list(jobs.values()), f"Its batch failed before its result was stored: {type(exc).__name__}: {exc}")
        raise
    finally:
        _computing_release(jobs)
    answered: set[int] = set()
    ordered = []
    for delivery in deliveries:
        first = delivery.translation_id not in answered  # a job twice in one batch runs once
        answered.add(delivery.translation_id)
        ordered.append(outcomes.get(delivery.translation_id, RunOutcome.SKIPPED) if first else RunOutcome.SKIPPED)
    return ordered


def _claims_give_back(jobs: list[Job], reason: str) -> None:
    """Put the rows of ``jobs`` still held by these claims back to queued (best effort: with the
    database away this fails too, and the reconciler hands such claims over once they are
    overdue, ``translation.recovery.overdue_claims_handle``)."""
    from django.db import connection

    if not jobs:
        return
    if not connection.in_atomic_block:  # a connection the failure broke is replaced
        connection.close_if_unusable_or_obsolete()
    try:
        for job in jobs:
            translation_requeue(job=job, reason=RETRYING.format(attempt=job.attempt, reason=reason))
    except Exception:
        logger.warning("Could not put %d claimed job(s) back to queued; the reconciler hands them over later",
                       len(jobs), exc_info=True)


def translation_run(*, translation_id: int, worker: str, consumed_from: str) -> RunOutcome:
    """One job on its own; raises TransientFailure when it should be sent again later."""
    [outcome] = translation_run_batch([Delivery(translation_id, worker, consumed_from)])
    if isinstance(outcome, TransientFailure):
        raise outcome
    return outcome


# The batcher of this process, when a worker runs one (see workers/device_loop.py); task
# threads hand their jobs to it instead of running them one by one.
_batcher = None


def use_batcher(batcher) -> None:
    global _batcher
    _batcher = batcher


def current_batcher():
    return _batcher
