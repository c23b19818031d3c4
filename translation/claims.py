"""Claiming ledger rows on a worker: each claim is a new attempt, the attempt its token.

A broker's delivery names a row (``Delivery``); claiming it makes the worker's ``Job``. The
rows a process is computing (or holds for a batch, ledger dispatch) are listed here, so a
duplicate delivery reaching another of its loops leaves them alone.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

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
    """What a worker needs of a claimed row to run it. ``attempt`` is the claim's token."""

    id: int
    attempt: int
    text: str
    source: str
    target: str
    spec: EngineSpec
    back_translate: bool = False  # once stored, translate the output back (an agent's draft)
    route_id: int | None = None
    requested_at: datetime | None = None  # the message saved (or the request, for a sample)
    claimed_at: datetime | None = None
    queued_at: datetime | None = None  # when the job was queued (a retry keeps its first queueing)

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
    """List rows claimed ahead of their batch, each ``(id, attempt)``, as ``holder``'s (the
    intake) until ``translations_let_go``: no loop of this process claims them again for a job
    message. Each listing names its claim's attempt, so letting go of an old claim of a row
    leaves a newer claim's listing."""
    with _computing_lock:
        _computing.update((pk, (holder, attempt)) for pk, attempt in claims)


def translations_let_go(claims: list[tuple[int, int]], holder: int) -> None:
    with _computing_lock:
        for pk, attempt in claims:
            if _computing.get(pk) == (holder, attempt):
                del _computing[pk]


# What a claim reads of a row and its message: what the job and the claim's metrics take (see
# ``_job_of``, ``_claim_rows``), not the rest of two wide rows (the model's output, corrections,
# the message's conversation and delivery fields), whose loading was most of a claim's CPU.
CLAIM_FIELDS = (
    "status", "worker", "consumed_from", "attempts", "failure_reason", "route", "source_language", "target_language",
    "engine", "model_name", "precision", "input_text", "back_translate", "created_at", "enqueued_at",
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
    """
    if not deliveries:
        return {}
    by_id = {delivery.translation_id: delivery for delivery in deliveries}
    now = timezone.now()
    claimed: list[Translation] = []
    try:
        with transaction.atomic():
            rows = (
                Translation.objects.select_for_update(of=("self",), skip_locked=True)  # not the messages' rows
                .select_related("message")
                .only(*CLAIM_FIELDS)
                .filter(pk__in=by_id, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
                .order_by("pk")  # one lock order for every worker: no deadlocks between batches
            )
            rows = list(rows)
            # A running row is another worker's claim while that worker beats: left to it (a
            # duplicate delivery). Its claim is taken over only once that worker is dead. A worker's
            # own running row is claimed again unless one of its loops is computing it (then the
            # batch that claimed it failed, and the job came back for a retry).
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
            claimed = _claim_rows(taken, now)
            if computing:
                with _computing_lock:  # listed before the commit publishes the claims
                    _computing.update((row.pk, threading.get_ident()) for row in claimed)
    except BaseException:
        if computing:
            _computing_release(row.pk for row in claimed)  # the claims were not committed
        raise
    return {row.pk: _job_of(row, now) for row in claimed}


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
        row.started_at, row.updated_at = now, now
        claimed.append(row)
    # One UPDATE per (worker, queue), not a bulk_update: its CASE per row and field cost about
    # 2 ms of CPU per job to build (measured, 128 rows). The rows are locked by this
    # transaction, so ``attempts + 1`` is the value each claimed row now holds.
    same_claim: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in claimed:
        same_claim[(row.worker, row.consumed_from)].append(row.pk)
    for (worker, consumed_from), ids in same_claim.items():
        Translation.objects.filter(pk__in=ids).update(
            status=TranslationStatus.RUNNING, worker=worker, consumed_from=consumed_from,
            attempts=F("attempts") + 1, started_at=now, updated_at=now, retry_at=None,
        )
    return claimed


def _count_claim(*, route_id, source: str, target: str, model: str, enqueued_at, now) -> None:
    labels = metrics.job_labels(route_id=route_id, source=source, target=target, model=model)
    metrics.jobs_received.labels(**labels).inc()
    if enqueued_at is not None:
        metrics.queue_wait_seconds.labels(**labels).observe(max(0.0, (now - enqueued_at).total_seconds()))


def _count_gave_up(*, route_id, source: str, target: str, model: str) -> None:
    labels = metrics.job_labels(route_id=route_id, source=source, target=target, model=model)
    metrics.jobs_failed.labels(**labels, reason=metrics.FAILED_GAVE_UP).inc()


def job_of(*, id: int, attempts: int, text: str, source: str, target: str, engine: str, model: str, precision: str,
           back_translate: bool, route_id: int | None, created_at: datetime, enqueued_at: datetime | None,
           message_created_at: datetime | None, now: datetime) -> Job:
    """The job of a row just claimed, from its values (an ORM row's, or a claim statement's)."""
    return Job(
        id=id, attempt=attempts, text=text, source=source, target=target,
        spec=EngineSpec(engine=engine, model=model, precision=precision or "fp32", device=device()),
        back_translate=back_translate, route_id=route_id,
        requested_at=message_created_at or created_at,  # the message saved (or the row, for a sample)
        claimed_at=now, queued_at=enqueued_at or created_at,  # a resend keeps its first queueing
    )


def _job_of(row: Translation, now) -> Job:
    return job_of(
        id=row.pk, attempts=row.attempts, text=row.source_text, source=row.source_language,
        target=row.target_language, engine=row.engine, model=row.model_name, precision=row.precision,
        back_translate=row.back_translate, route_id=row.route_id, created_at=row.created_at,
        enqueued_at=row.enqueued_at, message_created_at=row.message.created_at if row.message_id else None, now=now,
    )


def translation_claim(*, translation_id: int, worker: str, consumed_from: str) -> Job | None:
    """``translations_claim`` for one row."""
    return translations_claim([Delivery(translation_id, worker, consumed_from)]).get(translation_id)


def _fail_rows(rows, reason: str) -> int:
    now = timezone.now()
    return rows.update(status=TranslationStatus.FAILED, failure_reason=reason[:2000], finished_at=now, updated_at=now)
