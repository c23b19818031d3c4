"""Task events for the jobs a worker claims from the ledger, so that Flower lists each job in
ledger dispatch as it does in jobs dispatch.

In ``jobs`` dispatch every job is a Celery task: the worker's consumer sends its events
(received, started, succeeded or retried) and Flower lists it. In ``ledger`` dispatch the only
task is the queue's wake-up, and the jobs are rows the worker claims (the batching worker's
intake, workers/ledger_intake.py, or the wake-up's task itself in a worker without a batcher).
This sends, for each claimed job, the events the same job would have made as a task, under the
task's name (``translation.translate``), its argument (the row's id) and a task id of its own,
so Flower's task list, its task rates and its per-worker counts see every job in both dispatches.

The events go out grouped: Celery's event dispatcher buffers the ``task`` group and one message
(routing key ``task.multi``, a list of events, as Celery's own workers send) carries everything
buffered since the last. A thread of its own sends them when the worker asks (once a batch's
worth of jobs has finished: their claims' events with their ends) or every ``FLUSH_EVERY_S``
(a long batch's claims show as started meanwhile), so a batch of 128 costs one publish or two,
not 384, and a broker that stalls (a failed connect takes seconds) never stalls the intake or a
device loop.
Events are monitoring: a broker that cannot take them loses them (counted and logged), never the
jobs, which live in the database.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from celery.signals import worker_ready, worker_shutdown
from celery.utils.saferepr import saferepr

from translation.claims import Job

logger = logging.getLogger(__name__)

# A task id per ledger row: the same row keeps it over its attempts, as a task keeps its id over
# its retries.
TASK_ID_NAMESPACE = uuid.UUID("0b9f6f4e-4b8e-5f8a-9d3c-6c1e2a7b5d10")
# Events waiting for a flush, at most: more are dropped (a broker that takes none for a while).
BUFFER_LIMIT = 4096
FLUSH_EVERY_S = 1.0
# The events' own connection gives up on a broker that does not answer (kombu's Redis transport
# waits for ever by default): a stalled flush ends, and with it a stopping worker's last one.
SOCKET_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
EVENTS_PER_JOB = 3  # received, started, and an end: sent, or dropped, together
TRANSLATE_TASK = "translation.translate"  # the task a job is in jobs dispatch (translation/tasks.py)
FAILED = saferepr("failed")  # what the translate task returns for a job that failed (RunOutcome.FAILED)


def task_id(job: Job) -> str:
    """The task id Flower lists a ledger job under: from its row's id and its request's time, so
    that two databases' rows with one id (a test database, a restored one) are not one task."""
    stamp = job.requested_at.timestamp() if job.requested_at is not None else ""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"translation:{job.id}:{stamp}"))


# The worker's consumer, once it is ready: its event dispatcher says whether task events are on
# now (``CELERY_TASK_EVENTS``, then Flower's or an operator's ``enable_events`` /
# ``disable_events`` remote commands).
_consumer = None


@worker_ready.connect
def _remember_consumer(sender=None, **kwargs) -> None:
    global _consumer
    _consumer = sender


def worker_sends_task_events(app) -> bool:
    """Whether this worker sends task events now (the setting, before its consumer is ready)."""
    dispatcher = getattr(_consumer, "event_dispatcher", None)
    if dispatcher is None:
        return bool(app.conf.worker_send_task_events)
    # Celery's own rule: no groups means every group; remote control adds or removes "task".
    return bool(dispatcher.enabled) and (not dispatcher.groups or "task" in dispatcher.groups)


class LedgerTaskEvents:
    """The task events of one worker's ledger jobs. They follow the worker's own task events
    (``CELERY_TASK_EVENTS``, and the remote commands that turn them on and off): while those are
    off, nothing is built or sent. ``enabled`` fixes it instead (tests)."""

    def __init__(self, app, hostname: str, *, enabled: bool | None = None, connection=None) -> None:
        self._enabled = enabled
        self.hostname = hostname
        self.flushes = 0  # messages sent, each carrying a group of events
        self.lost = 0  # events the broker did not take, or dropped while it took none
        self._counts = threading.Lock()
        self._app = app
        self._connection = connection  # the broker's, from the settings, unless given
        self._dispatcher = None
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()  # opening, flushing and closing, one at a time
        self._wanted = threading.Event()
        self._closing = False

    @property
    def enabled(self) -> bool:
        if self._enabled is not None:
            return self._enabled
        return worker_sends_task_events(self._app)

    def _count_lost(self, count: int) -> None:
        from translation import metrics

        with self._counts:
            self.lost += count
        metrics.task_events_dropped.labels(worker=self.hostname).inc(count)

    # --- what the intake and the device loops call (never raises, never waits on the broker) -----
    def claimed(self, jobs: list[Job], queue: str) -> None:
        """The jobs a look claimed: received and started, as a task is once a pool thread takes it."""
        if self.enabled and jobs:
            self._guarded(self._claimed, jobs, queue)

    def gave_up(self, jobs: list[Job], queue: str) -> None:
        """Rows a look failed instead of claiming (out of attempts): taken and ended as failed, as
        the translate task of such a row returns 'failed'."""
        if self.enabled and jobs:
            self._guarded(self._claimed, jobs, queue, gave_up=True)

    def finished(self, job: Job, *, outcome=None, error: BaseException | None = None) -> None:
        """A job's end: ``outcome`` (a ``RunOutcome``: done, failed, skipped) when it ran, as the
        translate task returns it; else ``error``, and the row is queued to run again (a passing
        failure, or its batch never ran), as the task is retried."""
        if self.enabled:
            self._guarded(self._finished, job, outcome, error)

    def flush_soon(self) -> None:
        """Ask the sender thread to send what is buffered now."""
        if self._dispatcher is not None:
            self._wanted.set()

    # --- building ----------------------------------------------------------------------------------
    def _guarded(self, build, *args, **kwargs) -> None:
        try:
            build(*args, **kwargs)
        except Exception:  # events are monitoring: never the job's failure
            logger.warning("Could not build a ledger task event", exc_info=True)

    def _room(self, events: int):
        """The dispatcher, if ``events`` more fit in its buffer (else they are dropped together,
        so Flower never gets a job's end without its start: the broker has taken none for a while)."""
        if self._closing:  # a job finishing after the events were closed (the worker stopped)
            self._count_lost(events)
            return None
        dispatcher = self._open()
        if len(dispatcher._group_buffer["task"]) + events > BUFFER_LIMIT:
            self._count_lost(events)
            return None
        return dispatcher

    def _claimed(self, jobs: list[Job], queue: str, *, gave_up: bool = False) -> None:
        """Received and started; for a row given up on, ended as failed at once. Its retries: the
        attempts before this one (a row given up on ran all of its own)."""
        now = time.time()
        for job in jobs:
            # A claim's events and its end's share the room: a job whose start was dropped
            # leaves its end out too (see _finished), when the buffer is full at both.
            dispatcher = self._room(EVENTS_PER_JOB)
            if dispatcher is None:
                continue
            tid = task_id(job)
            dispatcher.send(
                "task-received", uuid=tid, name=TRANSLATE_TASK, args=f"[{job.id}]",
                kwargs=repr({"dispatch": "ledger", "queue": queue, "attempt": job.attempt}),
                root_id=tid, parent_id=None, retries=job.attempt if gave_up else max(0, job.attempt - 1),
                eta=None, expires=None,
                timestamp=now,
            )
            dispatcher.send("task-started", uuid=tid, timestamp=now)
            if gave_up:
                dispatcher.send("task-succeeded", uuid=tid, result=FAILED, runtime=0.0, timestamp=now)

    def _finished(self, job: Job, outcome, error: BaseException | None) -> None:
        dispatcher = self._room(1)
        if dispatcher is None:
            return
        tid = task_id(job)
        if error is None:
            runtime = max(0.0, time.time() - job.claimed_at.timestamp()) if job.claimed_at is not None else None
            dispatcher.send("task-succeeded", uuid=tid, result=saferepr(getattr(outcome, "value", outcome)),
                            runtime=runtime)
        else:
            dispatcher.send("task-retried", uuid=tid, exception=saferepr(error), traceback="")

    def _open(self):
        if self._dispatcher is None:
            with self._lock:
                if self._dispatcher is None:
                    # A connection of its own (the consumer's is its thread's alone), not buffered
                    # while offline: a failed flush is dropped. Its buffer is only ever flushed by
                    # the sender (the limit above keeps Celery's own flush-when-full from running).
                    connection = self._connection or self._app.connection_for_write(transport_options={
                        "socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S})
                    self._dispatcher = self._app.events.Dispatcher(
                        connection=connection, hostname=self.hostname,
                        enabled=True, buffer_while_offline=False, buffer_group=["task"],
                        buffer_limit=BUFFER_LIMIT + 16,
                    )
                    self._sender = threading.Thread(target=self._send_loop, name="ledger-task-events", daemon=True)
                    self._sender.start()
        return self._dispatcher

    # --- sending -----------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._closing:
            self._wanted.wait(FLUSH_EVERY_S)
            self._wanted.clear()
            self.flush()

    def flush(self) -> None:
        """Send what is buffered, as one message (the sender thread's work)."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        with self._lock:
            waiting = len(dispatcher._group_buffer["task"])
            if not waiting:
                return
            try:
                dispatcher.flush(errors=False, groups=True)
            except Exception:
                # Celery keeps a failed batch buffered: drop it, the next flush starts afresh.
                del dispatcher._group_buffer["task"][:waiting]
                self._count_lost(waiting)
                logger.warning("Could not send %d ledger task event(s) for Flower; they are dropped", waiting,
                               exc_info=self.lost == waiting)
            else:
                with self._counts:
                    self.flushes += 1

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is left and close the connection (the worker stops). Waits ``timeout`` at
        most: a sender still stuck on a stalled broker is left to the process's exit."""
        self._closing = True
        self._wanted.set()
        if self._sender is not None:
            self._sender.join(timeout)
            if self._sender.is_alive():
                logger.warning("The ledger task events' broker did not answer; the last events are dropped")
                return
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        try:
            self.flush()
            if self._lock.acquire(timeout=timeout):
                try:
                    dispatcher.close()
                    dispatcher.connection.release()
                finally:
                    self._lock.release()
        except Exception:
            logger.debug("Closing the ledger task events' connection failed", exc_info=True)


_shared: dict[str, LedgerTaskEvents] = {}
_shared_lock = threading.Lock()


def worker_task_events(hostname: str) -> LedgerTaskEvents:
    """This process's task events for ledger jobs claimed under ``hostname`` (one sender thread
    and connection each, made at the first event)."""
    from cs_portal.celery import app

    with _shared_lock:
        if hostname not in _shared:
            _shared[hostname] = LedgerTaskEvents(app, hostname)
        return _shared[hostname]


@worker_shutdown.connect
def _close_shared(**kwargs) -> None:
    """The worker stops: the wake-up tasks' events (a worker without an intake) go out, and their
    connections close."""
    with _shared_lock:
        shared = list(_shared.values())
        _shared.clear()
    for events in shared:
        events.close()
