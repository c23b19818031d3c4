"""Nothing lost: the ledger, not the broker, is the source of truth.

A job is claimed in the ledger (``worker``, ``attempts``, ``claims``) before it is computed, and the claim
lives as long as its worker's heartbeat is fresh (``WORKER_HEARTBEAT_STALE_S``): the heartbeat
is the lease. Two ways a claim comes back to the queue:

- ``worker_lost``: at once, when a worker's supervisor sees the process end (``claims_release``
  alone when a worker of that name starts again);
- ``dead_workers_handle``: workers that stopped beating (a lost host, a frozen process), found
  by the reconciler that every worker runs;
- ``overdue_claims_handle``: a claim older than any batch and its store may take, whoever holds
  it (a live worker whose batch failed with the database away, so that it could not give the
  rows back).

A lost worker also held jobs it had taken from the broker but not claimed yet (waiting for
their batch); on Redis those come back only after the visibility timeout, so they are sent
again at once (``in_flight_resend``).

``lost_jobs_resend`` sends again the queued rows that no queue holds (never sent, or the broker
restarted empty), counting each resend and failing the row visibly after
``TRANSLATION_MAX_RESENDS``. A job handed over can never give two done results: the worker
whose claim was superseded stores nothing (``translation.execution``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.utils import timezone

from translation import metrics
from translation.dispatch import MAX_BACKOFF_S
from translation.models import Translation, TranslationStatus

logger = logging.getLogger(__name__)

# A job a worker took from the broker and has not claimed after this long is taken as lost: a
# live worker claims what it took within a batch or two (it prefetches two batches' worth), and a
# retry's message, which it holds until its countdown ends (at most MAX_BACKOFF_S), that long
# after its countdown.
UNCLAIMED_AFTER_S = 60.0 + MAX_BACKOFF_S

HANDED_OVER = "Its worker {worker} stopped before finishing ({why}); handed over to another worker."
LOST = "Sent {times} times without reaching a worker (lost by the broker each time)."
OVERDUE = "Its claim by {worker} did not end in {seconds:.0f} s; handed over to another worker."


def _requeue(rows, reason: str) -> list[int]:
    """Put claimed or lost rows back to queued, and send each on commit. A claim whose batch
    never started gives its attempt back (``attempts_given_back``); its token, the row's claim
    count, stays spent."""
    from translation.execution import attempts_given_back
    from translation.sending import translations_enqueue

    ids = [row.pk for row in rows]
    if not ids:
        return []
    now = timezone.now()
    Translation.objects.filter(pk__in=ids).update(
        status=TranslationStatus.QUEUED, failure_reason=reason[:2000], enqueued_at=now, updated_at=now,
        resends=F("resends") + 1, retry_at=None, attempts=attempts_given_back(),
    )
    fresh = list(Translation.objects.filter(pk__in=ids).select_related("message"))
    transaction.on_commit(lambda: translations_enqueue(fresh, urgent=True))
    return ids


def claims_release(*, worker: str, reason: str) -> list[int]:
    """Hand ``worker``'s running jobs back to the queue now (its process has ended)."""
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=TranslationStatus.RUNNING, worker=worker)
            .only("pk")
        )
        released = _requeue(rows, HANDED_OVER.format(worker=worker, why=reason))
    if released:
        logger.warning("Handed over %d job(s) of %s: %s", len(released), worker, reason)
    return released


def live_workers(names) -> set[str]:
    """Those of ``names`` whose heartbeat is fresh: their claims hold."""
    from workers.models import WorkerHeartbeat

    return set(
        WorkerHeartbeat.objects.filter(name__in=set(names), stopped_at__isnull=True, beat_at__gte=stale_before())
        .values_list("name", flat=True)
    )


def stale_before():
    """The database's clock minus the staleness limit: beats are written and judged on the
    database's clock, so the hosts' clocks need not agree."""
    return ExpressionWrapper(Now() - timedelta(seconds=settings.WORKER_HEARTBEAT_STALE_S), output_field=DateTimeField())


def in_flight_resend(*, holding: list[int], queues: list[str], since, reason: str) -> list[int]:
    """Send again the queued jobs a lost worker had taken from the broker but not claimed yet
    (waiting for their batch): on Redis they come back only after the visibility timeout. They
    are the ones its last beat listed (``holding``), and those of its queues sent after that
    beat (``since``) that no queue holds: it may have taken them meanwhile. A copy another
    worker holds is then delivered twice, and done once."""
    from translation.dispatch import ledger_dispatch
    from translation.queues import translation_ids_waiting

    if ledger_dispatch():  # a worker claims rows before it holds them: its claims are handed over
        return []
    waiting = translation_ids_waiting(queues) if queues else set()
    if waiting is None:  # not Redis (RabbitMQ gives a dead consumer's messages back at once), or unreachable
        return []
    taken_since = Q(queue__in=queues, enqueued_at__gte=since) if since is not None else Q(pk__in=[])
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(Q(pk__in=holding) | taken_since, status=TranslationStatus.QUEUED, enqueued_at__isnull=False)
            .exclude(pk__in=waiting)
            .only("pk")
        )
        return _requeue(rows, reason)


def worker_lost(*, worker: str, reason: str) -> tuple[list[int], list[int]]:
    """``worker`` is gone: hand over its claimed jobs, send again the jobs it had taken and not
    claimed, and mark it stopped. Returns (handed over, sent again)."""
    from workers.models import WorkerHeartbeat

    beat = WorkerHeartbeat.objects.filter(name=worker).first()
    queues, holding = (beat.queues, beat.holding) if beat else ([], [])
    since = beat.beat_at - timedelta(seconds=0.5) if beat else None
    if beat is not None and beat.stopped_at is None:
        now = timezone.now()
        said = f"Presumed dead: {reason}." + (f" Its last error: {beat.last_error}" if beat.last_error else "")
        WorkerHeartbeat.objects.filter(pk=beat.pk).update(
            stopped_at=now, ready=False, last_error=said[:2000], last_error_at=now
        )
    released = claims_release(worker=worker, reason=reason)
    resent = in_flight_resend(holding=holding, queues=queues, since=since, reason=HANDED_OVER.format(worker=worker, why=reason))
    return released, resent


def dead_workers_handle(*, exclude: str = "", orphans: bool = True) -> dict[str, tuple[list[int], list[int]]]:
    """Every worker whose heartbeat went stale (a lost host, a frozen process) is handled once as
    lost (``exclude``, the caller, knows it is alive even when its own beat is late). Running
    jobs claimed by a worker that never beat are handed over too, unless ``orphans`` is False
    (the dearer of the two looks: a caller looking often makes it less often)."""
    from workers.models import WorkerHeartbeat

    handled = {}

    def stale():  # built only when needed: the ORM's filters cost more CPU than the look's statement
        return WorkerHeartbeat.objects.filter(stopped_at__isnull=True, beat_at__lt=stale_before(), ready=True).exclude(
            name=exclude)

    # A plain read first: most turns find nobody, and take no lock (SQLite's is global).
    if _rows("stale", exclude, lambda: stale().values_list("pk")[:1]):
        with transaction.atomic():
            for beat in stale().select_for_update(skip_locked=True):
                handled[beat.name] = worker_lost(worker=beat.name, reason="its heartbeat went stale")
    if not orphans:
        return handled

    # The workers holding running rows without a fresh beat, in one query (it runs every second
    # in every worker, so one statement and one row per worker, not per running row).
    def orphaned(also_excluded=()):
        live = WorkerHeartbeat.objects.filter(stopped_at__isnull=True, beat_at__gte=stale_before()).values("name")
        return (
            Translation.objects.filter(status=TranslationStatus.RUNNING)
            .exclude(worker__in=["", exclude, *also_excluded])
            .exclude(worker__in=live)
            .order_by()  # the model's ordering by id would make DISTINCT per row
            .values_list("worker")
            .distinct()
        )

    found = list(orphaned(handled)) if handled else _rows("orphaned", exclude, orphaned)
    for (worker,) in sorted(found):
        handled[worker] = (claims_release(worker=worker, reason="its heartbeat went stale"), [])
    return handled


def overdue_claims_handle() -> list[int]:
    """Hand over the running rows whose claim is older than ``TRANSLATION_CLAIM_OVERDUE_S``
    (longer than a claim is ever legitimately held: a model's load inside its batch, the forward
    pass, the store's retries, or in ledger dispatch the wait behind one such batch): a worker that
    lives on but will never finish them (its batch failed and the database refused to take them
    back; a claim left by a bug). A live worker's claim is otherwise never touched, so such a
    row would stay running, skipped by every worker, until that worker's process ended."""
    overdue_s = settings.TRANSLATION_CLAIM_OVERDUE_S
    cutoff = timezone.now() - timedelta(seconds=overdue_s)
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=TranslationStatus.RUNNING, updated_at__lt=cutoff)
            .only("pk", "worker")
        )
        if not rows:
            return []
        workers = sorted({row.worker for row in rows})
        # The next claim's token (the claim count) differs from the overdue one's, so a worker
        # that wakes up holding it can neither store nor fail the new claim's row.
        released = _requeue(rows, OVERDUE.format(worker=", ".join(workers), seconds=overdue_s))
    logger.warning("Handed over %d job(s) whose claim never ended (%s)", len(released), ", ".join(workers))
    return released


# The reconciler's two looks for lost workers, as SQL compiled once per worker name, staleness
# limit and database: building them through the ORM took 1.1 ms of CPU per look, four looks a
# second in every worker (measured; the statement itself is a small part of it).
_COMPILED: dict[tuple, tuple[str, tuple]] = {}


def _rows(look: str, exclude: str, queryset) -> list[tuple]:
    from django.db import connection

    key = (look, exclude, settings.WORKER_HEARTBEAT_STALE_S, connection.vendor, connection.settings_dict["NAME"])
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = queryset().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(*compiled)
        return cursor.fetchall()


LOST_LOOK_KEY = "translation.lost-look"


def lost_look_turn(worker: str, period_s: float) -> bool:
    """Whether this reconciler looks for lost jobs now: one reconciler of the fleet looks, the one
    holding the turn in the broker's Redis (``SET NX``, renewed at each of its looks, expiring
    after two periods without one). A look reads the database and the broker for every queue;
    every worker looking each period multiplied that by the fleet's size. The same reconciler
    looks period after period, so the suspects of its last look are the fleet's: a job missing at
    two looks in a row is sent again, as before. Where Redis cannot be asked (another broker, an
    outage), every reconciler looks."""
    from translation.dispatch import broker_redis

    found = broker_redis()
    if found is None:
        return True
    client, prefix = found
    key, me, ttl = prefix + LOST_LOOK_KEY, (worker or "-").encode(), max(1, int(period_s * 2000))
    try:
        if client.set(key, me, nx=True, px=ttl):
            return True
        if client.get(key) == me:
            client.pexpire(key, ttl)
            return True
        return False
    except Exception:
        logger.warning("Could not take the turn to look for lost jobs; looking all the same", exc_info=True)
        return True


def lost_look_release(worker: str) -> None:
    """A reconciler that stops gives up its turn, so that another looks at the next period."""
    from translation.dispatch import broker_redis

    found = broker_redis()
    if found is None:
        return
    client, prefix = found
    try:
        if client.get(prefix + LOST_LOOK_KEY) == (worker or "-").encode():
            client.delete(prefix + LOST_LOOK_KEY)
    except Exception:  # it expires after two periods
        logger.warning("Could not give up the turn to look for lost jobs", exc_info=True)


@dataclass
class Resent:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    # (id, claims) of the jobs no queue held at this look; the claim count tells a job claimed
    # and queued again in between from one that stayed where it was.
    missing: set[tuple[int, int]] = field(default_factory=set)


def lost_jobs_resend(*, older_than_s: float, seen_missing: set[tuple[int, int]] | None = None) -> Resent:
    """Send again the queued rows older than ``older_than_s`` that no queue holds: never sent
    (the broker was down at commit), lost (the broker restarted empty), or taken by a worker
    longer ago than that and still not claimed (a worker lost with its claim transaction open,
    whose rows no hand-over could touch). Where the broker cannot be searched for a job (not
    Redis), only never-sent rows are resent.

    A row is stamped as sent when it is saved, and its message is sent once its transaction
    commits: a long transaction (a thousand messages saved at once) commits rows whose stamp is
    already old, and their sends take seconds. ``seen_missing``, the ``missing`` of the caller's
    previous look, makes that safe: then a row is resent only when no queue held it at that
    look either (the reconciler looks every ``older_than_s / 2``). None: resend what is missing
    now (a single look, as from a command or a test)."""
    from translation.dispatch import ledger_dispatch
    from translation.queues import broker_search

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    candidates, beyond = _lost_candidates(cutoff)
    if not candidates:
        return Resent()
    if ledger_dispatch():
        return _queues_wake(candidates)
    wanted: dict[str, set[int]] = {}  # the sent ones, by queue
    for pk, queue, enqueued_at, _ in candidates:
        if enqueued_at is not None:
            wanted.setdefault(queue, set()).add(pk)
    search = broker_search(
        sorted(queue for queue in wanted if queue), wanted=wanted,
        delivered_within_s=max(older_than_s, UNCLAIMED_AFTER_S),
    ) if wanted else None
    if search is not None and beyond:
        # A queue read to its end (a job of its window was not found, or it holds fewer messages
        # than the window) tells of every job of it: its younger ones are looked at now, not at
        # later looks (a broker restarted empty lost them all).
        for queue in sorted(search.read_whole & beyond):
            candidates += _beyond(queue, cutoff, {pk for pk, of, _, _ in candidates if of == queue})
    held = search.ids if search is not None else (set() if not wanted else None)
    sent_ones = {(pk, claims) for pk, _, enqueued_at, claims in candidates if enqueued_at is not None}
    if held is None:  # the broker cannot be searched now: nothing is called lost, nothing forgotten
        # (the suspects beyond this look's windows included: those still queued stay suspects)
        missing = set()
        if seen_missing:
            still = _sent_before(cutoff).filter(pk__in=[pk for pk, _ in seen_missing]).values_list("pk", "claims")
            missing = seen_missing & set(still)
        confirmed: set[tuple[int, int]] = set()
    else:
        missing = {(pk, claims) for pk, claims in sent_ones if pk not in held}
        confirmed = missing if seen_missing is None else missing & seen_missing
    confirmed_ids = {pk for pk, _ in confirmed}
    lost = [pk for pk, _, enqueued_at, _ in candidates if enqueued_at is None or pk in confirmed_ids]
    result = Resent()
    with transaction.atomic():
        rows = list(
            Translation.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk__in=lost, status=TranslationStatus.QUEUED)
            .exclude(enqueued_at__gte=cutoff)  # another reconciler resent it meanwhile
            .exclude(retry_at__isnull=False, updated_at__gte=cutoff)  # retried meanwhile: a new message
            .only("pk", "resends", "route_id", "source_language", "target_language", "model_name")
        )
        give_up = [row for row in rows if row.resends >= settings.TRANSLATION_MAX_RESENDS]
        if give_up:
            now = timezone.now()
            for row in give_up:
                Translation.objects.filter(pk=row.pk).update(
                    status=TranslationStatus.FAILED, failure_reason=LOST.format(times=row.resends + 1),
                    finished_at=now, updated_at=now,
                )
            result.failed = [row.pk for row in give_up]
        result.sent = _requeue([row for row in rows if row not in give_up], "Sent again: no queue held it.")
    for row in give_up:  # counted once its transaction is over
        labels = metrics.job_labels(route_id=row.route_id, source=row.source_language, target=row.target_language,
                                    model=row.model_name)
        metrics.jobs_failed.labels(**labels, reason=metrics.FAILED_LOST).inc()
    handled = set(result.sent) | set(result.failed)
    result.missing = {(pk, claims) for pk, claims in missing if pk not in handled}  # locked ones stay suspects
    if result.sent or result.failed:
        logger.warning("Resent %d lost job(s); failed %d after %d resends", len(result.sent), len(result.failed),
                       settings.TRANSLATION_MAX_RESENDS)
    return result


# The sent jobs of one queue that a look searches the broker for: its oldest. Their messages are
# at the end of the queue that workers take from, so the search reads about as many messages as
# it looks for, where reading the whole queue (a backlog of 100,000 jobs older than the cutoff)
# cost every worker 1.6 s of CPU per look, every ``TRANSLATION_LOST_AFTER_S / 2`` (measured,
# docs/benchmarks.md). The younger ones are looked at once these are taken, or sent again. A job
# retried after a failure keeps its id and first send stamp, but Celery pushes its new message
# behind the backlog: it is looked for once the window's sends reach its retry (before, a
# retried job among a queue's oldest made each look read that queue to its end).
LOST_LOOK_PER_QUEUE = 1000


CANDIDATE_FIELDS = ("pk", "queue", "enqueued_at", "claims")


def _old(cutoff):
    return Translation.objects.filter(status=TranslationStatus.QUEUED, created_at__lt=cutoff)


def _sent_before(cutoff):
    return _old(cutoff).filter(enqueued_at__lt=cutoff)


def _lost_candidates(cutoff) -> tuple[list[tuple[int, str, object, int]], set[str]]:
    """(id, queue, enqueued_at, claims) of the queued rows saved before ``cutoff`` and not sent
    since: every one never sent (no search needed: its row says so), the oldest
    ``LOST_LOOK_PER_QUEUE`` sent ones of each queue (oldest by id, through the index of queued
    rows by queue), and the queue's jobs retried before the newest send of that window (their
    messages went behind the jobs then waiting: once the window reaches them, they are among its
    messages). And the queues with sent jobs this look leaves for later ones."""
    candidates = list(_old(cutoff).filter(enqueued_at__isnull=True).values_list(*CANDIDATE_FIELDS))
    sent, beyond = _sent_before(cutoff), set()
    for queue in sorted(sent.order_by().values_list("queue", flat=True).distinct()):
        of_queue = sent.filter(queue=queue)
        window = list(of_queue.filter(retry_at__isnull=True).order_by("pk").values_list(*CANDIDATE_FIELDS, "resends")[
            :LOST_LOOK_PER_QUEUE])
        reached = cutoff
        if len(window) == LOST_LOOK_PER_QUEUE:
            beyond.add(queue)
            # How far into the queue the window goes: its newest first send (a job sent again went
            # ahead of the queue, a fresh stamp on an old id, and says nothing of it).
            first_sends = [enqueued_at for _, _, enqueued_at, _, resends in window if not resends]
            reached = min(cutoff, max(first_sends, default=min(row[2] for row in window)))
        window = [row[:-1] for row in window]
        # A retry's message was sent when its row went back to queued (``updated_at``, through the
        # index of retried rows by queue).
        retried = list(of_queue.filter(retry_at__isnull=False, updated_at__lt=cutoff, updated_at__lte=reached)
                       .order_by("updated_at").values_list(*CANDIDATE_FIELDS)[:LOST_LOOK_PER_QUEUE])
        if len(retried) == LOST_LOOK_PER_QUEUE:
            beyond.add(queue)
        candidates += window + retried
    return candidates, beyond


def _beyond(queue: str, cutoff, looked: set[int]) -> list[tuple[int, str, object, int]]:
    """The sent rows of ``queue`` that a look left for later ones (``_lost_candidates``): its
    younger jobs, and its jobs retried later than its window's newest send."""
    rows = _sent_before(cutoff).filter(queue=queue).exclude(retry_at__isnull=False, updated_at__gte=cutoff)
    return [row for row in rows.values_list(*CANDIDATE_FIELDS) if row[0] not in looked]


def _queues_wake(candidates) -> Resent:
    """Ledger dispatch: no message names a job, so none can be lost with the broker; a job waits
    unseen only while its queue has no wake-up coming (one lost with a worker that took it, or
    never sent). Wake the queues of the jobs that waited that long (a wake-up already on its way
    is not doubled), and stamp those never handed over. Returns the latter as sent."""
    from translation.dispatch import queue_wake

    woken = {queue for queue in sorted({queue for _, queue, _, _ in candidates if queue}) if queue_wake(queue)}
    unsent = [pk for pk, queue, enqueued_at, _ in candidates if enqueued_at is None and queue in woken]
    if unsent:
        Translation.objects.filter(pk__in=unsent, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return Resent(sent=unsent)
