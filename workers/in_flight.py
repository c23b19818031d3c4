"""The jobs a worker's job intake has in flight (``workers.job_intake``): each one from its
message's arrival until its message is settled, and the registry that holds them."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.job_intake import JobIntake


class InFlight:
    """A job submitted from its message, until its message is settled.

    It stands among Celery's active requests meanwhile, so it offers what Celery reads and
    writes of one: ``id``, ``task``, ``acknowledged``, ``info()`` (``inspect active``),
    ``cancel()`` (a cold shutdown, or a lost connection with
    ``worker_cancel_long_running_tasks_on_connection_loss``) and ``eventer``, which Celery sets on
    its reserved requests (where a closed connection moved the active ones) when it builds the
    new connection's event dispatcher. Unused here: the intake reads the consumer's dispatcher
    each time.
    """

    __slots__ = ("intake", "message", "ack", "reject", "task_id", "name", "args", "kwargs", "started", "time_start",
                 "claimed", "eventer", "__weakref__")  # Celery's sets of requests hold them weakly

    def __init__(self, intake: JobIntake | None, message, ack, reject, name: str = "", args=None, kwargs=None) -> None:
        self.intake, self.message, self.ack, self.reject = intake, message, ack, reject
        self.task_id = message.headers.get("id")
        self.name = message.headers.get("shadow") or name  # what Flower lists it as, as Celery's request
        self.args, self.kwargs = args, kwargs  # as decoded from its message
        self.started = time.monotonic()
        self.time_start = time.time()  # as Celery's request: when it started, epoch seconds
        self.claimed = False
        self.eventer = None

    def __str__(self) -> str:  # as Celery's request, in its log lines
        return f"{self.name}[{self.task_id}]"

    # --- what Celery reads of an active request --------------------------------------------------
    @property
    def id(self) -> str | None:
        return self.task_id

    @property
    def task(self):
        return self.intake.task if self.intake is not None else None

    @property
    def acknowledged(self) -> bool:
        return False  # acknowledged as it leaves the active requests

    def info(self, safe: bool = False) -> dict:
        """What ``inspect active`` lists for it, as for a pool task (``Request.info``): with
        ``safe``, the arguments as their repr (what Flower asks for)."""
        message = self.message
        headers, delivery = message.headers, getattr(message, "delivery_info", None) or {}
        properties = getattr(message, "properties", None) or {}
        shown_args, shown_kwargs = headers.get("argsrepr"), headers.get("kwargsrepr")
        return {
            "id": self.task_id, "name": self.name,
            "args": shown_args if safe or self.args is None else self.args,
            "kwargs": shown_kwargs if safe or self.kwargs is None else self.kwargs,
            "type": headers.get("task") or self.name, "hostname": self.intake.hostname if self.intake else None,
            "time_start": self.time_start, "acknowledged": False,
            "delivery_info": {"exchange": delivery.get("exchange"), "routing_key": delivery.get("routing_key"),
                              "priority": properties.get("priority"), "redelivered": delivery.get("redelivered", False)},
            "worker_pid": None,  # computed in the batcher's engine, not in a pool process
        }

    def cancel(self, pool=None, signal=None, emit_retry: bool = True) -> None:
        """Nothing to stop: the job's batch runs on. Its message, unacknowledged, goes back to its
        queue as the connection closes (Redis: after the visibility timeout, or at once when
        the supervisor sends the worker's jobs again); a duplicate result is never stored."""


class Registry:
    """The jobs of this process in flight, across consumer restarts (a reconnect builds a new
    strategy; the jobs of the old one still end, and a shutdown waits for them all). A job is
    *claimed* by whoever settles its message (its batch's answer, or the timer giving up on it),
    and leaves once its message is settled.

    ``active``: the set it also stands in meanwhile (Celery's active requests); ``reserved``:
    a set it leaves too (Celery moves its active requests there when a connection closes)."""

    def __init__(self, active=None, reserved=None) -> None:
        self._lock = threading.Condition()
        self._jobs: dict[InFlight, None] = {}  # oldest first
        self._active, self._reserved = active, reserved

    def add(self, job: InFlight) -> None:
        with self._lock:
            self._jobs[job] = None
            if self._active is not None:
                self._active.add(job)

    def claim(self, job: InFlight) -> bool:
        """True for the first caller only: its job's message is its to settle."""
        with self._lock:
            if job.claimed:
                return False
            job.claimed = True
            return True

    def done(self, job: InFlight) -> None:
        """Its message is settled (acknowledged, retried, rejected)."""
        with self._lock:
            self._jobs.pop(job, None)
            for requests in (self._active, self._reserved):
                if requests is not None:
                    requests.discard(job)
            if not self._jobs:
                self._lock.notify_all()

    def __len__(self) -> int:
        return len(self._jobs)

    def overdue(self, older_than_s: float) -> list[InFlight]:
        """The jobs not claimed yet that were submitted more than ``older_than_s`` ago."""
        limit = time.monotonic() - older_than_s
        found = []
        with self._lock:
            for job in self._jobs:
                if job.started > limit:
                    break
                if not job.claimed:
                    found.append(job)
        return found

    def wait_empty(self, timeout: float, give_up=lambda: False) -> int:
        """Wait up to ``timeout`` for every job to be settled (or until ``give_up()``); returns
        how many were not."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._jobs and time.monotonic() < deadline and not give_up():
                self._lock.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            return len(self._jobs)
