"""Claiming ledger rows on a worker: each claim is a new attempt, its token the row's claim count.

A broker's delivery names a row (``Delivery``); claiming it makes the worker's ``Job``. The
rows a process is computing (or holds for a batch, ledger dispatch) are listed here, so a
duplicate delivery reaching another of its loops leaves them alone.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone as utc

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from translation import metrics
from translation.engines import EngineSpec
from translation.models import Translation, TranslationStatus
from translation.recovery import live_workers

GAVE_UP = "Gave up after {attempts} attempts. {reason}"
UNFINISHED = "The job was delivered that many times without finishing (did it stop its worker?)."


@dataclass(frozen=True)
class Delivery:
    """One job as the broker delivered it."""

    translation_id: int
    worker: str
    consumed_from: str


@dataclass(frozen=True)
class Job:
    """What a worker needs of a claimed row to run it. ``claim`` is the claim's token: the row's
    ``claims`` when it was claimed, which only a later claim changes (``attempt`` may be given
    back: a batch that never started)."""

    id: int
    attempt: int
    claim: int
    text: str
    source: str
    target: str
    spec: EngineSpec
    back_translate: bool = False  # once stored, translate the output back (an agent's draft)
    route_id: int | None = None
    requested_at: datetime | None = None  # the message saved (or the request, for a sample)
    claimed_at: datetime | None = None
    queued_at: datetime | None = None  # when the job was queued (a retry keeps its first queueing)
    alone: bool = False  # a forward pass it shared stopped the engine: it runs in one of its own

    @property
    def waited_s(self) -> float:
        """Seconds from its queueing to its claim (0 when unknown; the two clocks may be two hosts')."""
        if self.queued_at is None or self.claimed_at is None:
            return 0.0
        return max(0.0, (self.claimed_at - self.queued_at).total_seconds())

    @property
    def translation_id(self) -> int:  # what the heartbeat lists of a job waiting in the batcher
        return self.id

    @property
    def labels(self) -> dict[str, str]:
        return metrics.job_labels(route_id=self.route_id, source=self.source, target=self.target, model=self.spec.model)


def device() -> str:
    """The device this process computes on; the worker entry point sets it."""
    return os.environ.get("TRANSLATION_DEVICE", "cpu")


# The rows this process's device loops have claimed and not finished, each with the thread
# (loop) that claimed it. A worker runs several loops (CPU lanes): a duplicate delivery of a job
# one loop computes can reach another, which must leave it (starting a second attempt would
# waste a forward pass, or give up on a job that is running fine). Listed inside the claim's
# transaction, so no other loop can see the row running before it is listed; taken off by the
# loop that listed it once its outcome is settled (a row queued again meanwhile may have been
# claimed and listed by another loop: that listing stays). The ledger intake lists the rows it
# claims into the batcher too (``translations_hold``): a job message for
# one of them (a fleet switching dispatch) then leaves it to the intake's batch.
_computing: dict[int, int | tuple[int, int]] = {}
_computing_lock = threading.Lock()


def _computing_release(ids) -> None:
    me = threading.get_ident()
    with _computing_lock:
        for pk in ids:
            if _computing.get(pk) == me:
                del _computing[pk]


def translations_hold(claims: list[tuple[int, int]], holder: int) -> None:
    """List rows claimed ahead of their batch, each ``(id, claim)``, as ``holder``'s (the
    intake) until ``translations_let_go``: no loop of this process claims them again for a job
    message. Each listing names its claim, so letting go of an old claim of a row leaves a
    newer claim's listing."""
    with _computing_lock:
        _computing.update((pk, (holder, claim)) for pk, claim in claims)


def translations_let_go(claims: list[tuple[int, int]], holder: int) -> None:
    with _computing_lock:
        for pk, claim in claims:
            if _computing.get(pk) == (holder, claim):
                del _computing[pk]


# What a claim reads of a row and its message: what the job and the claim's metrics take (see
# ``_job_of``, ``_claim_rows``), not the rest of two wide rows (the model's output, corrections,
# the message's conversation and delivery fields), whose loading was most of a claim's CPU.
CLAIM_FIELDS = (
    "status", "worker", "consumed_from", "attempts", "claims", "failure_reason", "route", "source_language", "target_language",
    "engine", "model_name", "precision", "input_text", "back_translate", "created_at", "enqueued_at", "runs_alone",
    "message__text", "message__created_at",
)


def translations_claim(deliveries: list[Delivery], *, computing: bool = False) -> dict[int, Job]:
    """Claim the deliveries' rows as new attempts, in one transaction; returns the claimed jobs.

    ``computing``: the caller computes them now; they are listed as this process's until it
    calls ``_computing_release`` (``translation_run_batch`` does).

    Rows finished or gone are left out (duplicate deliveries), and so are rows another
    transaction holds locked (``LOCKED``): a worker never waits on another's claim, which a
    frozen or lost worker could hold for long. A row that has used up its attempts (a job that
    kept killing workers) is failed with that reason instead.

    The queued rows (as a rule all of them) are claimed by one statement per queue they came
    from (``claim_picked``, as ledger dispatch claims): the ORM's select, model instances and
    update took 16.5 ms of CPU for 128 rows against 5.6 ms, and 2.4 ms against 0.5 for one row
    (measured, docs/benchmarks.md), on the cores the model needs. A running row (a duplicate
    delivery, a lost worker's claim) takes the ORM's way, which asks whose claim it is.
    """
    if not deliveries:
        return {}
    by_id = {delivery.translation_id: delivery for delivery in deliveries}
    now = timezone.now()
    picked: list[dict] = []  # the claim statements' rows
    fresh: list[dict] = []  # of them, the rows claimed (not failed out of attempts)
    claimed: list[Translation] = []  # the rest's rows claimed
    try:
        with transaction.atomic():
            same_claim: dict[tuple[str, str], list[int]] = defaultdict(list)
            for delivery in by_id.values():
                same_claim[(delivery.worker, delivery.consumed_from)].append(delivery.translation_id)
            for (worker, consumed_from), ids in same_claim.items():
                picked += _claim_queued_ids(sorted(ids), worker=worker, consumed_from=consumed_from, now=now)
            fresh = [row for row in picked if not row["gave_up"]]
            if computing:
                with _computing_lock:  # listed before the commit publishes the claims
                    _computing.update((row["id"], threading.get_ident()) for row in fresh)
            answered = {row["id"] for row in picked}
            rest = {pk: delivery for pk, delivery in by_id.items() if pk not in answered}
            if rest:
                claimed = _claim_others(rest, now)
                if computing:
                    with _computing_lock:
                        _computing.update((row.pk, threading.get_ident()) for row in claimed)
    except BaseException:
        if computing:
            _computing_release([row["id"] for row in fresh] + [row.pk for row in claimed])  # not committed
        raise
    for row in picked:
        if row["gave_up"]:
            _count_gave_up(**_labels_of(row))
    _count_claims(fresh, now)
    jobs = {row["id"]: claimed_job(row, now) for row in fresh}
    jobs.update((row.pk, _job_of(row, now)) for row in claimed)
    return dict(sorted(jobs.items()))


def _claim_queued_ids(ids: list[int], *, worker: str, consumed_from: str, now) -> list[dict]:
    """``claim_picked`` for the queued rows among ``ids`` that no other transaction holds."""
    from django.db import connection

    table, c, locking = claim_sql_names()
    if connection.vendor == "postgresql":  # one statement text for every batch: the ids as an array
        among, params = "= ANY(CAST(%s AS bigint[]))", [ids]
    else:
        among, params = f"IN ({', '.join(['%s'] * len(ids))})", list(ids)
    pick = f"SELECT {c['id']} FROM {table} WHERE {c['id']} {among} AND {c['status']} = %s ORDER BY {c['id']}{locking}"
    return claim_picked(pick, [*params, TranslationStatus.QUEUED], worker=worker, consumed_from=consumed_from,
                        started=True, now=now)


def _claim_others(by_id: dict[int, Delivery], now) -> list[Translation]:
    """Within the caller's transaction: claim, through the ORM, the deliveries' rows that the
    claim statement left (running ones; the rest are finished, gone or held by another claim)."""
    rows = (
        Translation.objects.select_for_update(of=("self",), skip_locked=True)  # not the messages' rows
        .select_related("message")
        .only(*CLAIM_FIELDS)
        .filter(pk__in=by_id, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
        .order_by("pk")
    )
    rows = list(rows)
    # A running row is another worker's claim while that worker beats: left to it (a duplicate
    # delivery). Its claim is taken over only once that worker is dead. A worker's own running
    # row is claimed again unless one of its loops is computing it (then the batch that claimed
    # it failed, and the job came back for a retry).
    holders = live_workers(row.worker for row in rows if row.status == TranslationStatus.RUNNING)
    with _computing_lock:
        me = threading.get_ident()
        elsewhere = {pk for pk in by_id if _computing.get(pk, me) != me}  # this process's other loops
    taken = []
    for row in rows:
        if row.status == TranslationStatus.RUNNING:
            own = row.worker == by_id[row.pk].worker
            if (own and row.pk in elsewhere) or (not own and row.worker in holders):
                continue
        delivery = by_id[row.pk]
        row.worker, row.consumed_from = delivery.worker, delivery.consumed_from
        taken.append(row)
    return _claim_rows(taken, now)


def _claim_rows(rows: list[Translation], now) -> list[Translation]:
    """Within the caller's transaction, holding the rows' locks: claim each row for the worker
    and queue set on it as a new attempt, or fail it when it has used up its attempts (a job
    that kept killing workers). Returns the rows claimed, started now."""
    claimed: list[Translation] = []
    for row in rows:
        labels = dict(route_id=row.route_id, source=row.source_language, target=row.target_language, model=row.model_name)
        if row.attempts >= settings.TRANSLATION_MAX_ATTEMPTS:
            reason = GAVE_UP.format(attempts=row.attempts, reason=row.failure_reason or UNFINISHED)
            _fail_rows(Translation.objects.filter(pk=row.pk), reason)
            _count_gave_up(**labels)
            continue
        _count_claim(**labels, enqueued_at=row.enqueued_at, now=now)
        row.status = TranslationStatus.RUNNING
        row.attempts += 1
        row.claims += 1
        row.started_at, row.updated_at = now, now
        claimed.append(row)
    # One UPDATE per (worker, queue), not a bulk_update: its CASE per row and field cost about
    # 2 ms of CPU per job to build (measured, 128 rows). The rows are locked by this
    # transaction, so ``attempts + 1`` and ``claims + 1`` are the values each claimed row now holds.
    same_claim: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in claimed:
        same_claim[(row.worker, row.consumed_from)].append(row.pk)
    for (worker, consumed_from), ids in same_claim.items():
        Translation.objects.filter(pk__in=ids).update(
            status=TranslationStatus.RUNNING, worker=worker, consumed_from=consumed_from,
            attempts=F("attempts") + 1, claims=F("claims") + 1, started_at=now, updated_at=now, retry_at=None,
        )
    return claimed


def _count_claim(*, route_id, source: str, target: str, model: str, enqueued_at, now) -> None:
    labels = metrics.job_labels(route_id=route_id, source=source, target=target, model=model)
    metrics.jobs_received.labels(**labels).inc()
    if enqueued_at is not None:
        metrics.queue_wait_seconds.labels(**labels).observe(max(0.0, (now - enqueued_at).total_seconds()))


def _count_claims(rows: list[dict], now) -> None:
    """``_count_claim`` for a claim statement's rows, each counter's labels looked up once."""
    waits: dict[tuple, list] = defaultdict(list)
    for row in rows:
        waits[(row["route_id"], row["source_language"], row["target_language"], row["model_name"])].append(
            row["enqueued_at"])
    for (route_id, source, target, model), stamps in waits.items():
        labels = metrics.job_labels(route_id=route_id, source=source, target=target, model=model)
        metrics.jobs_received.labels(**labels).inc(len(stamps))
        histogram = metrics.queue_wait_seconds.labels(**labels)
        for enqueued_at in stamps:
            if enqueued_at is not None:
                histogram.observe(max(0.0, (now - enqueued_at).total_seconds()))


def _labels_of(row: dict) -> dict:
    return dict(route_id=row["route_id"], source=row["source_language"], target=row["target_language"],
                model=row["model_name"])


def _count_gave_up(*, route_id, source: str, target: str, model: str) -> None:
    labels = metrics.job_labels(route_id=route_id, source=source, target=target, model=model)
    metrics.jobs_failed.labels(**labels, reason=metrics.FAILED_GAVE_UP).inc()


def job_of(*, id: int, attempts: int, claims: int, text: str, source: str, target: str, engine: str, model: str, precision: str,
           back_translate: bool, route_id: int | None, created_at: datetime, enqueued_at: datetime | None,
           message_created_at: datetime | None, now: datetime, alone: bool = False) -> Job:
    """The job of a row just claimed, from its values (an ORM row's, or a claim statement's)."""
    return Job(
        id=id, attempt=attempts, claim=claims, text=text, source=source, target=target,
        spec=EngineSpec(engine=engine, model=model, precision=precision or "fp32", device=device()),
        back_translate=back_translate, route_id=route_id,
        requested_at=message_created_at or created_at,  # the message saved (or the row, for a sample)
        claimed_at=now, queued_at=enqueued_at or created_at,  # a resend keeps its first queueing
        alone=alone,
    )


def _job_of(row: Translation, now) -> Job:
    return job_of(
        id=row.pk, attempts=row.attempts, claims=row.claims, text=row.source_text, source=row.source_language,
        target=row.target_language, engine=row.engine, model=row.model_name, precision=row.precision,
        back_translate=row.back_translate, route_id=row.route_id, created_at=row.created_at,
        enqueued_at=row.enqueued_at, message_created_at=row.message.created_at if row.message_id else None, now=now,
        alone=row.runs_alone,
    )


def translation_claim(*, translation_id: int, worker: str, consumed_from: str) -> Job | None:
    """``translations_claim`` for one row."""
    return translations_claim([Delivery(translation_id, worker, consumed_from)]).get(translation_id)


def _fail_rows(rows, reason: str) -> int:
    now = timezone.now()
    return rows.update(status=TranslationStatus.FAILED, failure_reason=reason[:2000], finished_at=now, updated_at=now)


# The columns a claim statement returns (the message's through a subquery: SQLite's RETURNING
# names only the updated table's columns, and an unqualified ``message_id`` there is the
# claimed row's).
_CLAIM_COLUMNS = ("id", "attempts", "claims", "status", "input_text", "source_language", "target_language", "engine",
                  "model_name", "precision", "back_translate", "route_id", "created_at", "enqueued_at", "runs_alone")
_CLAIM_DATETIMES = ("created_at", "enqueued_at", "message_created_at")


def claim_sql_names() -> tuple[str, dict[str, str], str]:
    """What a claim statement's ``pick`` names: the ledger's table and its columns (by attribute
    name), quoted, and the locking clause that ends the pick (PostgreSQL locks the rows it picks
    and skips those another claim holds; SQLite has one writer at a time)."""
    from django.db import connection

    quote = connection.ops.quote_name
    columns = {field.attname: quote(field.column) for field in Translation._meta.concrete_fields}
    locking = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    return quote(Translation._meta.db_table), columns, locking


def claim_picked(pick: str, pick_params: list, *, worker: str, consumed_from: str, started: bool, now) -> list[dict]:
    """One statement: the rows ``pick`` selects (a ``SELECT`` of their ids that locks them, see
    ``claim_sql_names``), each claimed for ``worker`` as a new attempt taken from ``consumed_from``
    or, out of attempts, failed (``gave_up``). ``started``: the claim starts its compute time
    (``started_at`` now); otherwise its batch's start is stamped later (ledger dispatch claims
    ahead of the batch). SET expressions read the row as it was."""
    from django.db import connection

    from cs_portal.portal.models import Message

    quote = connection.ops.quote_name
    table, c, _ = claim_sql_names()
    messages = quote(Message._meta.db_table)
    message_pk, text, saved = (quote(Message._meta.get_field(name).column) for name in ("id", "text", "created_at"))
    out = f"{c['attempts']} >= %s"  # out of attempts
    before, rest = GAVE_UP.split("{attempts}")
    between, _ = rest.split("{reason}")
    gave_up = (f"SUBSTR(%s || CAST({c['attempts']} AS TEXT) || %s || CASE WHEN {c['failure_reason']} = '' "
               f"THEN %s ELSE {c['failure_reason']} END, 1, 2000)")
    sql = (
        f"WITH picked AS MATERIALIZED ({pick}) "
        f"UPDATE {table} SET "
        f"{c['status']} = CASE WHEN {out} THEN %s ELSE %s END, "
        f"{c['failure_reason']} = CASE WHEN {out} THEN {gave_up} ELSE {c['failure_reason']} END, "
        f"{c['finished_at']} = CASE WHEN {out} THEN %s ELSE {c['finished_at']} END, "
        f"{c['worker']} = CASE WHEN {out} THEN {c['worker']} ELSE %s END, "
        f"{c['consumed_from']} = CASE WHEN {out} THEN {c['consumed_from']} ELSE %s END, "
        f"{c['attempts']} = CASE WHEN {out} THEN {c['attempts']} ELSE {c['attempts']} + 1 END, "
        f"{c['claims']} = CASE WHEN {out} THEN {c['claims']} ELSE {c['claims']} + 1 END, "
        f"{c['started_at']} = CASE WHEN {out} THEN {c['started_at']} ELSE {'%s' if started else 'NULL'} END, "
        f"{c['retry_at']} = NULL, {c['updated_at']} = %s "
        f"WHERE {c['id']} IN (SELECT {c['id']} FROM picked) "
        f"RETURNING {', '.join(c[name] for name in _CLAIM_COLUMNS)}, "
        f"(SELECT m.{text} FROM {messages} m WHERE m.{message_pk} = {c['message_id']}), "
        f"(SELECT m.{saved} FROM {messages} m WHERE m.{message_pk} = {c['message_id']})"
    )
    stamp = connection.ops.adapt_datetimefield_value(now)
    most = settings.TRANSLATION_MAX_ATTEMPTS
    params = [
        *pick_params,
        most, TranslationStatus.FAILED, TranslationStatus.RUNNING,
        most, before, between, UNFINISHED,
        most, stamp,
        most, worker,
        most, consumed_from,
        most,
        most,
        most, *([stamp] if started else []),
        stamp,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    names = (*_CLAIM_COLUMNS, "message_text", "message_created_at")
    rows = [_read_row(dict(zip(names, values, strict=True))) for values in found]
    for row in rows:
        row["gave_up"] = row["status"] == TranslationStatus.FAILED
    return rows


def _read_row(row: dict) -> dict:
    """A claimed row's values as Python's (SQLite returns datetimes as text, booleans as 0/1)."""
    for name in _CLAIM_DATETIMES:
        value = row[name]
        if isinstance(value, str):
            value = parse_datetime(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=utc.utc)  # stored in UTC (USE_TZ)
        row[name] = value
    row["back_translate"], row["runs_alone"] = bool(row["back_translate"]), bool(row["runs_alone"])
    return row


def claimed_job(row: dict, now) -> Job:
    """The job of a row a claim statement claimed."""
    return job_of(
        id=row["id"], attempts=row["attempts"], claims=row["claims"], text=row["input_text"] or row["message_text"] or "",
        source=row["source_language"], target=row["target_language"], engine=row["engine"], model=row["model_name"],
        precision=row["precision"], back_translate=row["back_translate"], route_id=row["route_id"],
        created_at=row["created_at"], enqueued_at=row["enqueued_at"], message_created_at=row["message_created_at"],
        now=now, alone=row["runs_alone"],
    )
