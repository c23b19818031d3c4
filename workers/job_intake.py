"""Jobs dispatch in a batching worker: each job's message goes from the consumer straight into
the batcher.

In ``jobs`` dispatch (DESIGN.md principle 2) every translation job is a Celery message of the
``translation.translate`` task. Celery's own way to run one builds a ``Request``, hands it to a
pool thread, and the thread runs the task, which submits the job to the batcher and waits for
its batch; the request then acknowledges the message and sends the task's events. In a
batching worker the pool thread only waits: a thread, a request object and three context
switches per job. Profiled during a burst (py-spy), that was most of the worker's own CPU per
job, on the cores the model needs.

``strategy`` is the task's Celery *strategy* (``Task.Strategy``: the consumer's handler for the
task's messages, run in its event loop). For a plain job message it does what the pool thread
did, without the thread: it checks the payload, counts the task and sends its ``task-received``
and ``task-started`` events, and submits the job. When the job's batch ends (in a device loop's
thread) its message is acknowledged through Celery's own acknowledgement callback (run by the
event loop, so a batch's acknowledgements leave together, see ``cs_portal.broker``) and its end
is sent as ``task-succeeded``, or the task is retried as ``Task.retry`` retries it (a new
message, to the same queue, later) or failed once it ran out of retries.

Everything else takes Celery's default path, unchanged: a message with an ETA or an expiry, a
revoked task, a rate-limited task, callbacks or a chord, an old message protocol, a payload the
task refuses (the task fails it loudly, as before), and any message once the batcher is closed
(the worker stops). So do workers without a batcher or an event loop.

A job whose batch never answers (a device loop stuck) is given up after
``TRANSLATION_JOB_TIMEOUT_S`` and retried, as the pool thread's wait on its future was. A warm
shutdown waits for the jobs in flight (up to a tenth of that) before the connection closes, so
their acknowledgements are sent.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from celery import bootsteps
from celery.exceptions import Reject
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery.worker.control import inspect_command
from celery.worker.strategy import default as default_strategy
from django.conf import settings

from translation.tasks import pending_job

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


class InFlight:
    """A job submitted from its message, until its message is settled."""

    __slots__ = ("intake", "message", "ack", "reject", "task_id", "args", "kwargs", "embed", "started", "settled")

    def __init__(self, intake: JobIntake, message, ack, reject, args, kwargs, embed) -> None:
        self.intake, self.message, self.ack, self.reject = intake, message, ack, reject
        self.task_id = message.headers.get("id")
        self.args, self.kwargs, self.embed = args, kwargs, embed
        self.started = time.monotonic()
        self.settled = False


class Registry:
    """The jobs of this process in flight, across consumer restarts (a reconnect builds a new
    strategy; the jobs of the old one still end, and a shutdown waits for them all)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._jobs: dict[InFlight, None] = {}  # oldest first

    def add(self, job: InFlight) -> None:
        with self._lock:
            self._jobs[job] = None

    def settle(self, job: InFlight) -> bool:
        """True for the first caller only: its job's message is its to settle."""
        with self._lock:
            if job.settled:
                return False
            job.settled = True
            self._jobs.pop(job, None)
            if not self._jobs:
                self._lock.notify_all()
            return True

    def __len__(self) -> int:
        return len(self._jobs)

    def overdue(self, older_than_s: float) -> list[InFlight]:
        """The jobs submitted more than ``older_than_s`` ago (oldest first)."""
        limit = time.monotonic() - older_than_s
        found = []
        with self._lock:
            for job in self._jobs:
                if job.started > limit:
                    break
                found.append(job)
        return found

    def wait_empty(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every job to end; returns how many did not."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._jobs and time.monotonic() < deadline:
                self._lock.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            return len(self._jobs)


IN_FLIGHT = Registry()


class Counts:
    """What this worker's intake did with the translate messages, for ``inspect intake``."""

    NAMES = ("direct", "handed_to_pool", "succeeded", "retried", "failed", "expired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "in_flight": len(IN_FLIGHT)}


COUNTS = Counts()


class JobIntake:
    """The translate task's message handler in one consumer (built at each consumer start)."""

    def __init__(self, task, app, consumer, batcher, fallback) -> None:
        self.task, self.app, self.consumer, self.batcher, self.fallback = task, app, consumer, batcher, fallback
        self.hostname = consumer.hostname
        self.connection_errors = consumer.connection_errors
        self.eventer = consumer.event_dispatcher
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
        flight = InFlight(self, message, ack, reject, args, task_kwargs, embed)
        COUNTS.add("direct")
        worker_state.total_count[self.task.name] += 1
        worker_state.all_total_count[0] += 1
        if self._sends_events():
            self.eventer.send(
                "task-received", uuid=flight.task_id, name=self.task.name,
                args=headers.get("argsrepr") or saferepr(args), kwargs=headers.get("kwargsrepr") or saferepr(task_kwargs),
                root_id=headers.get("root_id"), parent_id=headers.get("parent_id"), retries=headers.get("retries", 0),
                eta=None, expires=None,
            )
            self.eventer.send("task-started", uuid=flight.task_id)
        logger.debug("Task %s[%s] received into the batcher", self.task.name, flight.task_id)
        IN_FLIGHT.add(flight)
        job.future.add_done_callback(lambda future, flight=flight: self._finished(flight, future))
        try:
            self.batcher.submit(job)
        except Exception as exc:  # closed since the check above: the job is retried, as the pool's was
            job.future.set_exception(exc)

    def _to_pool(self, *args, **kwargs):
        COUNTS.add("handed_to_pool")
        return self.fallback(*args, **kwargs)

    def _sends_events(self) -> bool:
        return bool(self.eventer is not None and self.eventer.enabled and self.task.send_events)

    # --- a device loop's thread (or the timer's, for a job overdue) ------------------------------
    def _finished(self, flight: InFlight, future: Future) -> None:
        if not IN_FLIGHT.settle(flight):  # given up on already (overdue): retried then
            return
        error = future.exception()
        try:
            if error is None:
                self._succeeded(flight, future.result())
            else:
                self._retry(flight, error)
        except Exception:  # never a device loop's failure; the message then waits for its redelivery
            logger.exception("Could not settle the message of task %s[%s]", self.task.name, flight.task_id)

    def _succeeded(self, flight: InFlight, outcome) -> None:
        flight.ack(logger, self.connection_errors)
        COUNTS.add("succeeded")
        if self._sends_events():
            self.eventer.send("task-succeeded", uuid=flight.task_id, result=saferepr(getattr(outcome, "value", outcome)),
                              runtime=time.monotonic() - flight.started)
        logger.debug("Task %s[%s] succeeded: %s", self.task.name, flight.task_id, getattr(outcome, "value", outcome))

    def _retry(self, flight: InFlight, error: BaseException) -> None:
        """What the task does with an exception (``translation.tasks.translate``): ``Task.retry``
        with the same delay and limit, in the message's own request context."""
        from translation.dispatch import retry_delay_s

        headers = flight.message.headers
        retries = headers.get("retries") or 0
        info = flight.message.delivery_info or {}
        request = {
            **headers, "args": flight.args, "kwargs": flight.kwargs, "hostname": self.hostname,
            "delivery_info": {"exchange": info.get("exchange"), "routing_key": info.get("routing_key"),
                              "priority": info.get("priority"), "redelivered": info.get("redelivered")},
            "reply_to": flight.message.properties.get("reply_to"),
            "correlation_id": flight.message.properties.get("correlation_id"),
            "called_directly": False,
        }
        self.task.push_request(**request)
        try:
            retried = self.task.retry(exc=error, countdown=retry_delay_s(retries + 1), throw=False,
                                      max_retries=settings.TRANSLATION_TASK_MAX_RETRIES)
        except Reject as rejected:  # the retry's message could not be sent: the ledger still holds the job
            logger.error("Task %s[%s] could not be retried: %r", self.task.name, flight.task_id, rejected.reason)
            self._failed(flight, rejected, requeue=rejected.requeue)
        except Exception as exc:  # out of retries: the task fails
            logger.error("Task %s[%s] raised unexpected: %r", self.task.name, flight.task_id, exc,
                         exc_info=(type(exc), exc, exc.__traceback__))
            self._failed(flight, exc)
        else:
            flight.ack(logger, self.connection_errors)
            COUNTS.add("retried")
            if self._sends_events():
                self.eventer.send("task-retried", uuid=flight.task_id, exception=saferepr(error), traceback="")
            logger.info("Task %s[%s] retry: %s", self.task.name, flight.task_id, retried)
        finally:
            self.task.pop_request()

    def _failed(self, flight: InFlight, exc: BaseException, *, requeue: bool | None = None) -> None:
        COUNTS.add("failed")
        if requeue is None:  # acknowledged, as Celery acknowledges a failed task (task_acks_on_failure_or_timeout)
            flight.ack(logger, self.connection_errors)
        else:
            flight.reject(logger, self.connection_errors, requeue)
        if self._sends_events():
            self.eventer.send("task-failed", uuid=flight.task_id, exception=saferepr(exc), traceback="")

def expire(timeout_s: float) -> int:
    """Retry the jobs whose batch has not answered in ``timeout_s`` (the pool thread's wait on the
    job's future gave up then); returns how many."""
    expired = 0
    for flight in IN_FLIGHT.overdue(timeout_s):
        if IN_FLIGHT.settle(flight):
            expired += 1
            COUNTS.add("expired")
            try:
                flight.intake._retry(flight, TimeoutError(f"its batch did not answer in {timeout_s:g} s"))
            except Exception:
                logger.exception("Could not retry the overdue task %s", flight.task_id)
    return expired


@inspect_command()
def intake(state) -> dict[str, int]:
    """What this worker's consumer did with the translate messages: ``direct`` (into the batcher),
    ``handed_to_pool`` (Celery's default path), how the direct ones ended, and ``in_flight`` now."""
    return COUNTS.snapshot()


def strategy(task, app, consumer, **kwargs):
    """``Task.Strategy`` of ``translation.translate`` in a batching worker (workers/main.py)."""
    from translation.execution import current_batcher

    fallback = default_strategy(task, app, consumer, **kwargs)
    batcher = current_batcher()
    if batcher is None or consumer.hub is None:  # no batcher, or acknowledgements without an event loop
        return fallback
    return JobIntake(task, app, consumer, batcher, fallback)


class DirectJobs(bootsteps.StartStopStep):
    """Consumer step: the timer that gives up on jobs whose batch never answered, and, when the
    worker stops, the wait for the jobs in flight (before the connection that acknowledges them
    closes; a reconnect does not wait: its old channel can acknowledge nothing)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs) -> None:
        super().__init__(c, **kwargs)
        self._timer = None

    def start(self, c) -> None:
        timeout_s = settings.TRANSLATION_JOB_TIMEOUT_S
        self._timer = c.timer.call_repeatedly(EXPIRE_EVERY_S, expire, (timeout_s,), priority=5)

    def stop(self, c) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, c) -> None:
        """The consumer stops for good (a warm shutdown; its event loop has stopped)."""
        if len(IN_FLIGHT):
            left = IN_FLIGHT.wait_empty(settings.TRANSLATION_JOB_TIMEOUT_S / 10)
            if left:
                logger.warning("%d job(s) in flight did not end; their messages are delivered again", left)
