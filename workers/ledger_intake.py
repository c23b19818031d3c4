"""Ledger dispatch in a batching worker: the thread that claims queued jobs into the batcher.

With ``TRANSLATION_DISPATCH=ledger`` (translation/dispatch.py) a queue receives a wake-up
(``translation.take_queued``) rather than a message per job. The wake-up's task only tells this
thread which queue to look at. For that queue it clears the bell, claims a batch's worth of
queued rows (``translations_claim_queued``: one transaction, oldest first) and submits them;
the device loops run them as they run any batch. While the queue may hold more (the claim was
full), it claims again as long as the batcher has a batch's worth of room, so the first batch
computes while the next is claimed, and a burst is taken a batch at a time as the lanes finish,
without a message per job.

The room is a batch for every lane and one more gathering. (In jobs dispatch the prefetch is two
batches per lane, since messages trickle in after each batch's acknowledgements; a claim is one
statement, and a batch's worth claimed as a lane frees comes at once.) A job that failed for a
passing reason (queued again by the execution layer) is looked for again once its backoff ends;
one whose batch never ran (the worker stopping, its engine process dead, the database failing
before the results were stored) is put back to queued here, or, when even that fails, handed
over by the reconciler once this worker is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from functools import partial

from django.db import close_old_connections

from translation.batching import Batcher, PendingJob
from translation.claims import Job, translations_let_go
from translation.dispatch import retry_delay_s, translations_claim_queued
from translation.execution import TransientFailure, translation_requeue

logger = logging.getLogger(__name__)

# A look that failed (the database is down) is tried again after this long.
LOOK_AGAIN_S = 1.0
NOT_RUN = "Its batch did not run ({why}); queued again."


def forward_pass_key(job: Job) -> str:
    """What jobs must share to share a forward pass (``Translation.forward_pass_key``'s parts)."""
    return f"{job.spec.engine}|{job.spec.model}|{job.spec.precision}|{job.source}|{job.target}"


def _policy(job: Job):
    """The batch size and wait of the job's route, as the route says now (the worker's own when
    the route is gone or cannot be read)."""
    from translation.routing import route_by_id
    from translation.tasks import _route_policy

    try:
        route = route_by_id(job.route_id) if job.route_id is not None else None
        return _route_policy(route.max_batch_size, route.max_wait_ms) if route is not None else None
    except Exception:
        logger.warning("Could not read the route of job %s; it takes the worker's batch policy", job.id, exc_info=True)
        return None


def queued_retry_in(queue: str) -> float | None:
    """Seconds until the first of ``queue``'s jobs waiting out a backoff may be claimed (None: none waits)."""
    from django.db.models import Min
    from django.utils import timezone

    from translation.models import Translation, TranslationStatus

    now = timezone.now()
    first = Translation.objects.filter(queue=queue, status=TranslationStatus.QUEUED, retry_at__gt=now).aggregate(
        first=Min("retry_at"))["first"]
    return None if first is None else max(0.0, (first - now).total_seconds())


class LedgerIntake(threading.Thread):
    def __init__(self, batcher: Batcher, worker: str, *, room: int, batch: int, metrics=None, events=None) -> None:
        super().__init__(name="ledger-intake", daemon=True)
        self.batcher, self.worker, self.metrics = batcher, worker, metrics
        # Its jobs' task events for Flower (translation/task_events.py).
        self.events = events
        self.room = max(1, room)  # jobs claimed and not finished, at most
        self.batch = max(1, min(batch, self.room))  # a look waits for this much room
        self._due: dict[str, float] = {}  # queue -> when to look at it (monotonic)
        self._in_flight = 0
        self._not_run: list[tuple[Job, str, str]] = []  # (job, queue, why): to put back to queued
        self._cond = threading.Condition()
        self._stopping = False
        self._holder = -id(self)  # how the rows it holds are listed (a thread's ident is never negative)
        # What the worker's status tells of it.
        self.wakes = 0
        self.looks = 0
        self.claimed = 0

    # --- the wake-up task's side -------------------------------------------------------------
    def wake(self, queue: str) -> None:
        """A wake-up for ``queue``: look at it now."""
        with self._cond:
            self.wakes += 1
        if self.metrics is not None:
            self.metrics.ledger_woken(queue)
        self._look(queue)

    def _look(self, queue: str, *, after_s: float = 0.0) -> None:
        """Look at ``queue`` ``after_s`` from now (or sooner, if asked again)."""
        at = time.monotonic() + after_s
        with self._cond:
            self._due[queue] = min(self._due.get(queue, at), at)
            self._cond.notify_all()

    def in_flight(self) -> int:
        return self._in_flight

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def drain(self, timeout: float) -> int:
        """Stop claiming and wait up to ``timeout`` for the claimed jobs to finish (the worker
        stops); returns how many did not. Those stay claimed by this worker until the
        reconciler of another (or this one, started again) hands them over."""
        self.stop()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            left = self._in_flight
        self.join(timeout=5)
        if self.events is not None:  # the finished jobs' events sent, the connection closed
            self.events.close()
        return left

    # --- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            queue, room = self._next_look()
            if queue is None:
                self._stopped()
                return
            try:
                self._put_back_not_run()
                if queue:
                    close_old_connections()
                    self._take(queue, room)
            except Exception:  # the database or the broker is down: the jobs wait in the ledger
                logger.warning("Could not claim the queued jobs of %s; looking again in %.0f s", queue or "a queue",
                               LOOK_AGAIN_S, exc_info=True)
                if queue:
                    self._look(queue, after_s=LOOK_AGAIN_S)
                time.sleep(LOOK_AGAIN_S / 10)  # not a hot loop while it lasts

    def _stopped(self) -> None:
        """Stopping: give back what never ran, and pass on the wake-ups not looked at yet (their
        bells stay set: without a wake-up, their jobs would wait for the bells to expire)."""
        from translation.dispatch import queue_wake

        try:
            self._put_back_not_run(again=False)
            with self._cond:
                pending, self._due = list(self._due), {}
            for queue in pending:
                queue_wake(queue, force=True)
        except Exception:  # the reconciler wakes any queue whose jobs wait too long
            logger.warning("Could not pass on the wake-ups of a stopping worker", exc_info=True)
        if self.events is not None:  # the connection stays open for the jobs still finishing (``drain``)
            self.events.flush_soon()
        close_old_connections()

    def _next_look(self) -> tuple[str | None, int]:
        """Wait for a queue that is due and a batch's worth of room; ("", 0) when jobs wait to be
        put back to queued; (None, 0) once stopping."""
        with self._cond:
            while not self._stopping and not self.batcher.closed:  # closed: its worker stops
                if self._not_run:
                    return "", 0
                now = time.monotonic()
                room = self.room - self._in_flight
                due = [queue for queue, at in self._due.items() if at <= now]
                if due and (room >= self.batch or self._in_flight == 0):
                    queue = min(due, key=self._due.__getitem__)  # the longest due first
                    del self._due[queue]
                    return queue, room
                # Woken by a wake-up, by a finished job (room), or when a delayed look comes due.
                later = [at - now for at in self._due.values() if at > now]
                self._cond.wait(min([LOOK_AGAIN_S, *later]))
            return None, 0

    def _take(self, queue: str, room: int) -> None:
        """Claim up to ``room`` of ``queue``'s jobs into the batcher, and say when to look again."""
        from translation.dispatch import bell_clear, queue_wake

        if self.batcher.closed:  # the worker stops: the jobs stay queued for another
            return
        bell_clear(queue)  # before the look: a job committed after it rings again
        # A batch's worth at a time: the first batch starts while the next is claimed.
        limit = min(room, self.batch)
        gave_up = partial(self.events.gave_up, queue=queue) if self.events is not None else None
        jobs = translations_claim_queued(queue, worker=self.worker, limit=limit, holder=self._holder, gave_up=gave_up)
        if self.events is not None:
            self.events.claimed(jobs, queue)  # sent with the jobs' ends (_finished), or by the sender's clock
        self.looks += 1
        self.claimed += len(jobs)
        # Nothing here raises: a claimed job reaches the batcher or goes back.
        # A job's wait for batch-mates counts from its queueing: the wake-up and the claim took
        # part of it already (a lone job at a light load waits no longer than ``max_wait_ms``).
        pending = [PendingJob(key=forward_pass_key(job), payload=job, text="", tokens=max(1, len(job.text) // 4),
                              policy=_policy(job), waited=job.waited_s) for job in jobs]
        with self._cond:
            self._in_flight += len(pending)
        for item in pending:
            item.future.add_done_callback(lambda future, job=item.payload: self._finished(job, queue, future))
        try:
            self.batcher.submit_all(pending)
        except Exception as exc:  # the batcher closed: the worker stops
            for item in pending:
                item.future.set_exception(exc)
        if self.metrics is not None:
            self.metrics.ledger_taken(queue, len(jobs))
        if len(jobs) >= limit:
            # More may wait: this worker looks again once a batch's worth of room is free, and a
            # wake-up (one, the bell sees to it) lets another worker of the queue join in.
            self._look(queue)
            queue_wake(queue)
            return
        retry_in = queued_retry_in(queue)
        if retry_in is not None:  # jobs waiting out a backoff: look when the first may run
            self._look(queue, after_s=retry_in)

    def _finished(self, job: Job, queue: str, future: Future) -> None:
        """A job's batch ended (in a device loop's thread, or the closing batcher's)."""
        error = future.exception()
        translations_let_go([(job.id, job.claim)], holder=self._holder)
        if self.events is not None:
            self.events.finished(job, outcome=None if error is not None else future.result(), error=error)
        with self._cond:
            self._in_flight -= 1
            if isinstance(error, TransientFailure):  # queued again by the execution layer, to retry then
                again = time.monotonic() + retry_delay_s(job.attempt)
                self._due[queue] = min(self._due.get(queue, again), again)
            elif error is not None:  # the claim is still this worker's: give it back
                self._not_run.append((job, queue, f"{type(error).__name__}: {error}"))
            # The thread waits for a batch's worth of room (or none in flight): wake it when that
            # comes, not at every job of a batch.
            batch_ended = error is not None or self._in_flight in (0, self.room - self.batch)
            if batch_ended:
                self._cond.notify_all()
        if batch_ended and self.events is not None:
            # The batch's events go out, its claims' with its ends (one message; the sender's own
            # clock sends a long batch's claims meanwhile). Its thread publishes: never this one.
            self.events.flush_soon()

    def _put_back_not_run(self, *, again: bool = True) -> None:
        with self._cond:
            waiting, self._not_run = self._not_run, []
        if not waiting:
            return
        from translation.dispatch import queue_wake

        failed, queues = [], set()
        for job, queue, why in waiting:
            try:
                translation_requeue(job=job, reason=NOT_RUN.format(why=why), retry=False)
                queues.add(queue)
            except Exception:
                failed.append((job, queue, why))
        for queue in queues:
            queue_wake(queue, force=True)  # any worker of the queue may take them now
            if again:  # this one too, while it runs
                self._look(queue)
        if failed and again:  # the database is down: again at the next turn (or the reconciler, if this worker ends)
            logger.warning("Could not put %d unfinished job(s) back to queued; trying again", len(failed))
            with self._cond:
                self._not_run.extend(failed)
            time.sleep(LOOK_AGAIN_S)
