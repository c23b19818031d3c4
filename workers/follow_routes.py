"""A worker started with ``--queues all`` consumes the queue of every enabled route, also of the
routes enabled or moved to a new queue after it started.

A thread of its own looks at the routes every ``every_s`` (the routing table itself is re-read
only when a route changed) and hands each new queue to the Celery consumer, which starts
consuming it on its next turn; the queue's model then loads in the engine process with its
first batch, as after any model change. The database is never read from the consumer's own
thread, whose loop must keep turning while the database is away. Queues are only added: a
queue that no route names any more is drained, not dropped (jobs may still wait in it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import bootsteps
from django.db import close_old_connections

logger = logging.getLogger(__name__)


class QueueFollower:
    def __init__(self, queues: list[str], *, on_added: Callable[[list[str]], None], every_s: float) -> None:
        """``queues``: what the worker consumes from the start; ``on_added`` is told the whole
        list each time queues are added (the heartbeat and the metrics show it)."""
        self.queues = sorted(queues)
        self._added: list[str] = []
        self._on_added = on_added
        self._every_s = every_s
        self._consumer = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # --- the consumer's side (its own thread) ---

    def attach(self, consumer) -> None:
        """The Celery consumer started (again, after a lost broker connection): it consumes the
        queues added so far too."""
        with self._lock:
            self._consumer = consumer
            added = list(self._added)
        for queue in added:
            self._add(consumer, queue)

    def detach(self) -> None:
        with self._lock:
            self._consumer = None

    # --- the follower's thread ---

    def check(self) -> list[str]:
        """Hand the enabled routes' queues that are not consumed yet to the consumer; returns them."""
        from translation.routing import routes

        enabled = {route.queue for route in routes() if route.enabled}
        with self._lock:  # held while scheduling: once detach() returns, nothing more reaches that consumer
            consumer = self._consumer
            new = sorted(enabled - set(self.queues))
            if consumer is None or not new:
                return []
            self.queues = sorted(set(self.queues) | set(new))
            self._added += new
            queues = list(self.queues)
            for queue in new:
                consumer.call_soon(self._add, consumer, queue)  # thread-safe: it wakes the consumer's loop
        for queue in new:
            logger.info("A route names queue %s: consuming it", queue)
        self._on_added(queues)
        return new

    def _add(self, consumer, queue: str) -> None:
        """On the consumer's thread. An error here must not escape into the consumer's loop (it
        would end it, or skip the acknowledgements queued beside it): the queue is given back to
        the next check instead."""
        try:
            if consumer.task_consumer is None:  # the consumer stopped meanwhile
                raise RuntimeError("the consumer is not consuming")
            consumer.add_task_queue(queue)
        except Exception:
            logger.warning("Could not start consuming %s; trying again", queue, exc_info=True)
            with self._lock:
                self.queues = [name for name in self.queues if name != queue]
                self._added = [name for name in self._added if name != queue]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="queue-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.check()
                self._failing = False
            except Exception:
                if not self._failing:  # once per outage, not every turn
                    logger.warning("Could not read the routes to follow new queues; trying again", exc_info=True)
                self._failing = True
                close_old_connections()


# Set by workers.main for a worker started with "all"; the bootstep hands it the consumer.
FOLLOWER: QueueFollower | None = None


class FollowRoutes(bootsteps.StartStopStep):
    """Attaches the Celery consumer to ``FOLLOWER`` once it consumes its task queues."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        if FOLLOWER is not None:
            FOLLOWER.attach(c)

    def stop(self, c) -> None:
        if FOLLOWER is not None:
            FOLLOWER.detach()

    shutdown = stop
