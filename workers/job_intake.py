"""Jobs dispatch in a worker with a batcher: each job's message goes from the consumer straight
into the batcher.

In ``jobs`` dispatch (DESIGN.md principle 2) every translation job is a Celery message of the
``translation.translate`` task. Celery's own way to run one builds a ``Request``, hands it to a
pool thread, and the thread runs the task, which submits the job to the batcher and waits for
its batch; the request then acknowledges the message and sends the task's events. Here the
pool thread only waits: a thread, a request object and several context switches per job.
Profiled during a burst (py-spy), that was most of the worker's own CPU per job, on the cores
the model needs.

``strategy`` is the task's Celery *strategy* (``Task.Strategy``: the consumer's handler for the
task's messages, run in its event loop). For a plain job message it does what the pool thread
did, without the thread: it checks the payload, counts the task in Celery's statistics, sends
its ``task-received`` and ``task-started`` events, and submits the job. When the job's batch
ends (in a device loop's thread) its message is acknowledged through Celery's own
acknowledgement callback (run by the event loop, so a batch's acknowledgements leave together,
see ``cs_portal.broker``) and ``task-succeeded`` is sent; or the task is retried as
``Task.retry`` retries it, in the message's own request context (a new message, same queue,
same priority, later), or failed once it ran out of retries. Retries publish from a thread of
their own: a broker that stalls never holds up a device loop or the event loop.

Everything else takes Celery's default path, unchanged: a message with an ETA or an expiry (a
retry's among them), a revoked task, a rate-limited task, linked tasks, the old message
protocol, a payload the task refuses (the task fails it loudly, as before), and any message once
the batcher is closed (the worker stops). So do workers without a batcher or an event loop.
Every ``workers.main`` worker has a batcher (``--no-batching`` makes each batch one job).

A job whose batch never answers (a device loop stuck) is given up after
``TRANSLATION_JOB_TIMEOUT_S`` and retried, as the pool thread's wait on its future was. A warm
shutdown waits for the jobs in flight (up to a tenth of that; a cold one does not) before the
connection closes, so that their acknowledgements are sent. After a reconnect Celery lowers the
consumer's prefetch by the jobs still in flight, its active requests, and gives it back as new
messages are acknowledged.

Each job in flight stands among Celery's active requests (``InFlight``: what Celery reads of a
request), as a pool task waiting for its batch did: ``inspect active`` lists it, the worker's
heartbeat counts it (the "active" count Flower shows per worker), and Celery's own reduction of
the prefetch after a reconnect counts it.

What a pool task has and these jobs do not: a place in Celery's table of requests by id
(``query_task``, a revoke's termination: a job in the batcher is not stopped), the ``task_*``
signals (nothing here listens to them), and INFO log lines for each job's receipt and success
(DEBUG here; retries and failures are logged as before).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future

from celery import bootsteps
from celery.exceptions import Reject
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy
from django.conf import settings

from translation.tasks import pending_job
from workers.in_flight import InFlight, Registry

logger = logging.getLogger(__name__)

# How often the consumer's timer looks for jobs whose batch has not answered in time.
EXPIRE_EVERY_S = 5.0


def _payload(translation_id, batch_key="", chars=0, max_batch=0, max_wait_ms=0, urgent=False, queued_at=0,
             **newer_hints) -> dict:
    """The task's arguments by name, as ``translation.tasks.translate`` takes them (hints a newer
    portal adds are ignored, as the task ignores them). A call the task would refuse raises
    ``TypeError``."""
    return {"translation_id": translation_id, "batch_key": batch_key, "chars": chars, "max_batch": max_batch,
            "max_wait_ms": max_wait_ms, "urgent": urgent, "queued_at": queued_at}


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


IN_FLIGHT = Registry(worker_state.active_requests, worker_state.reserved_requests)


class Counts:
    """What this worker's intake did with the translate messages, for ``inspect intake``."""

    NAMES = ("direct", "handed_to_pool", "succeeded", "retried", "failed", "expired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "in_flight": len(IN_FLIGHT)}


COUNTS = Counts()


class Retries(threading.Thread):
    """The thread that retries failed jobs (``Task.retry`` publishes a message: a broker that
    stalls holds up this thread, not a device loop or the consumer's event loop)."""

    def __init__(self) -> None:
        super().__init__(name="job-retries", daemon=True)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._start_lock = threading.Lock()

    def put(self, flight: InFlight, error: BaseException) -> None:
        with self._start_lock:
            if not self.is_alive() and self.ident is None:
                self.start()
        self._queue.put((flight, error))

    def run(self) -> None:
        while True:
            flight, error = self._queue.get()
            flight.intake.settle(flight, flight.intake.retry, error)


RETRIES = Retries()


class JobIntake:
    """The translate task's message handler in one consumer (built at each consumer start)."""

    def __init__(self, task, app, consumer, batcher, fallback) -> None:
        self.task, self.app, self.consumer, self.batcher, self.fallback = task, app, consumer, batcher, fallback
        self.hostname = consumer.hostname
        self.connection_errors = consumer.connection_errors
        self.revoked = consumer.controller.state.revoked if consumer.controller is not None else set()
        self.rate_limits = not consumer.disable_rate_limits
        self.buckets = consumer.task_buckets

    # --- the consumer's event loop -------------------------------------------------------------
    def __call__(self, message, body, ack, reject, callbacks, **kwargs):
        headers = message.headers
        if (
            body is not None  # protocol 1: Celery's own path converts it
            or headers.get("eta") or headers.get("expires")
            or headers.get("id") in self.revoked
            or (self.rate_limits and self.buckets.get(self.task.name) is not None)
            or self.batcher.closed  # the worker stops: the pool gives the job back as before
        ):
            return self._to_pool(message, body, ack, reject, callbacks, **kwargs)
        try:
            args, task_kwargs, embed = message.decode()
            if embed and any(embed.get(name) for name in ("callbacks", "errbacks", "chain", "chord")):
                raise ValueError("a linked task")
            job = pending_job(worker=self.hostname or "", consumed_from=(message.delivery_info or {}).get("routing_key") or "",
                              **_payload(*args, **task_kwargs))
        except Exception:  # not a plain job: the task itself refuses it, loudly, as it always did
            return self._to_pool(message, body, ack, reject, callbacks, **kwargs)
        flight = InFlight(self, message, ack, reject, self.task.name, args, task_kwargs)
        COUNTS.add("direct")
        worker_state.total_count[self.task.name] += 1
        worker_state.all_total_count[0] += 1
        eventer = self._eventer()
        if eventer is not None:
            eventer.send(
                "task-received", uuid=flight.task_id, name=flight.name,
                args=headers.get("argsrepr") or saferepr(args), kwargs=headers.get("kwargsrepr") or saferepr(task_kwargs),
                root_id=headers.get("root_id"), parent_id=headers.get("parent_id"), retries=headers.get("retries", 0),
                eta=None, expires=None,
            )
            eventer.send("task-started", uuid=flight.task_id)
        logger.debug("Task %s[%s] received into the batcher", flight.name, flight.task_id)
        IN_FLIGHT.add(flight)
        job.future.add_done_callback(lambda future, flight=flight: self._finished(flight, future))
        try:
            self.batcher.submit(job)
        except Exception as exc:  # closed since the check above: the job is retried, as the pool's was
            job.future.set_exception(exc)

    def _to_pool(self, *args, **kwargs):
        COUNTS.add("handed_to_pool")
        return self.fallback(*args, **kwargs)

    def _eventer(self):
        """The consumer's event dispatcher while it sends task events (read each time: a reconnect
        replaces it, and remote control turns events on and off)."""
        eventer = self.consumer.event_dispatcher
        return eventer if eventer is not None and eventer.enabled and self.task.send_events else None

    # --- a device loop's thread ------------------------------------------------------------------
    def _finished(self, flight: InFlight, future: Future) -> None:
        if not IN_FLIGHT.claim(flight):  # given up on already (overdue): retried then
            return
        error = future.exception()
        if error is None:
            self.settle(flight, self._succeeded, future.result())
        else:
            RETRIES.put(flight, error)

    def settle(self, flight: InFlight, how, *args) -> None:
        """``how(flight, *args)``, then the job leaves the registry; never raises (a device loop's
        or the retry thread's). When settling fails, the message goes back to its queue."""
        try:
            how(flight, *args)
        except Exception:
            logger.exception("Could not settle the message of task %s[%s]; it goes back to its queue",
                             flight.name, flight.task_id)
            try:
                flight.reject(logger, self.connection_errors, True)
            except Exception:  # the message waits for the broker's redelivery
                logger.debug("Could not requeue task %s", flight.task_id, exc_info=True)
        finally:
            IN_FLIGHT.done(flight)

    def _succeeded(self, flight: InFlight, outcome) -> None:
        flight.ack(logger, self.connection_errors)
        COUNTS.add("succeeded")
        eventer = self._eventer()
        if eventer is not None:
            eventer.send("task-succeeded", uuid=flight.task_id, result=saferepr(getattr(outcome, "value", outcome)),
                         runtime=time.monotonic() - flight.started)
        logger.debug("Task %s[%s] succeeded: %s", flight.name, flight.task_id, getattr(outcome, "value", outcome))

    # --- the retry thread ------------------------------------------------------------------------
    def retry(self, flight: InFlight, error: BaseException) -> None:
        """What the task does with an exception (``translation.tasks.translate``): ``Task.retry``
        with the same delay and limit, in the request context Celery builds for the message."""
        from translation.dispatch import retry_delay_s

        context = request_context(self.app, self.task, flight.message, self.hostname)
        retries = context.get("retries") or 0
        self.task.push_request(**context)
        try:
            retried = self.task.retry(exc=error, countdown=retry_delay_s(retries + 1), throw=False,
                                      max_retries=settings.TRANSLATION_TASK_MAX_RETRIES)
        except Reject as rejected:  # the retry's message could not be sent: the ledger still holds the job
            logger.error("Task %s[%s] could not be retried: %r", flight.name, flight.task_id, rejected.reason)
            self._failed(flight, rejected, error=rejected.reason, requeue=rejected.requeue)
        except Exception as exc:  # out of retries: the task fails
            logger.error("Task %s[%s] raised unexpected: %r", flight.name, flight.task_id, exc,
                         exc_info=(type(exc), exc, exc.__traceback__))
            self._failed(flight, exc)
        else:
            flight.ack(logger, self.connection_errors)
            COUNTS.add("retried")
            eventer = self._eventer()
            if eventer is not None:
                eventer.send("task-retried", uuid=flight.task_id, exception=saferepr(error), traceback=_traceback(error))
            logger.info("Task %s[%s] retry: %s", flight.name, flight.task_id, retried)
        finally:
            self.task.pop_request()

    def _failed(self, flight: InFlight, exc: BaseException, *, error=None, requeue: bool | None = None) -> None:
        """Acknowledged, as Celery acknowledges a failed task (``task_acks_on_failure_or_timeout``);
        a rejected retry (``Reject``) rejects the message instead, as Celery's request does."""
        COUNTS.add("failed")
        if requeue is None:
            flight.ack(logger, self.connection_errors)
        else:
            flight.reject(logger, self.connection_errors, requeue)
        eventer = self._eventer()
        if eventer is not None:
            cause = error if isinstance(error, BaseException) else exc
            eventer.send("task-failed", uuid=flight.task_id, exception=saferepr(exc), traceback=_traceback(cause))
            if requeue is not None:
                eventer.send("task-rejected", uuid=flight.task_id, requeue=requeue)


def request_context(app, task, message, hostname: str) -> dict:
    """The task's request context for ``message``, as Celery's ``Request`` builds it for a pool
    thread (its queue and priority among it: a retry goes where the job came from)."""
    request = Request(message, app=app, hostname=hostname, task=task)
    return {**request.request_dict, "called_directly": False}


def expire(timeout_s: float) -> int:
    """Retry the jobs whose batch has not answered in ``timeout_s`` (the pool thread's wait on the
    job's future gave up then); returns how many. Their late answers are ignored."""
    expired = 0
    for flight in IN_FLIGHT.overdue(timeout_s):
        if IN_FLIGHT.claim(flight):
            expired += 1
            COUNTS.add("expired")
            RETRIES.put(flight, TimeoutError(f"its batch did not answer in {timeout_s:g} s"))
    return expired


def strategy(task, app, consumer, **kwargs):
    """``Task.Strategy`` of ``translation.translate`` in a worker with a batcher (workers/main.py)."""
    from translation.execution import current_batcher

    fallback = default_strategy(task, app, consumer, **kwargs)
    batcher = current_batcher()
    if batcher is None or consumer.hub is None:  # no batcher, or acknowledgements without an event loop
        return fallback
    return JobIntake(task, app, consumer, batcher, fallback)


class DirectJobs(bootsteps.StartStopStep):
    """Consumer step: the timer that gives up on jobs whose batch never answered, and, when the
    worker stops, the wait for the jobs in flight (before the connection that acknowledges them
    closes)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs) -> None:
        super().__init__(c, **kwargs)
        self._timer = None

    def start(self, c) -> None:
        self._timer = c.timer.call_repeatedly(EXPIRE_EVERY_S, expire, (settings.TRANSLATION_JOB_TIMEOUT_S,), priority=5)

    def stop(self, c) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, c) -> None:
        """The consumer stops for good (its event loop has stopped). A warm shutdown waits for the
        jobs in flight; a cold one, or a second signal during the wait, does not."""
        if len(IN_FLIGHT):
            left = IN_FLIGHT.wait_empty(
                settings.TRANSLATION_JOB_TIMEOUT_S / 10,
                give_up=lambda: worker_state.should_terminate not in (None, False),
            )
            if left:
                logger.warning("%d job(s) in flight did not end; their messages are delivered again", left)
