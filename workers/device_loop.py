"""The device loop: the thread of a worker that turns batches into forward passes.

Celery's pool threads take jobs from the broker and hand them to the batcher; this loop takes
batches from the batcher, runs each through the execution layer (one claim, one forward pass
per group in the engine process, one write) and answers every job's future.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from django.db import close_old_connections

from translation.batching import Batcher, PendingJob
from translation.execution import translation_run_batch
from workers.engine_process import EngineProcess, EngineProcessDied
from workers.heartbeat import Heartbeat
from workers.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


class DeviceLoop(threading.Thread):
    def __init__(
        self, batcher: Batcher, engines: EngineProcess, heartbeat: Heartbeat | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__(name="device-loop", daemon=True)
        self.batcher, self.engines, self.heartbeat, self.metrics = batcher, engines, heartbeat, metrics
        self.running = 0  # jobs of the batch being computed
        self._stopping = threading.Event()
        self.batches = 0
        self.jobs = 0
        self.last_batch_at: float | None = None

    def run(self) -> None:
        while not self._stopping.is_set():
            if self.metrics:
                self.metrics.loop_turned()
            batch = self.batcher.next_batch(timeout=0.5)
            if batch:
                if self.heartbeat:
                    self.heartbeat.batch_started()
                self.running = len(batch)
                self.process(batch)
                self.running = 0
                if self.heartbeat:
                    self.heartbeat.batch_ended()
                if self.metrics:
                    self.metrics.batch_ended()
            elif self.heartbeat:
                self.heartbeat.idle()
            if not self.engines.alive() and not self._stopping.is_set():
                # Without its models the worker can only fail jobs: stop it (a warm shutdown
                # gives its unfinished jobs back to the broker) and let its supervisor restart it.
                logger.critical("The engine process died; stopping this worker")
                if self.heartbeat:
                    self.heartbeat.error("The engine process died; the worker stopped for its supervisor to restart it.")
                self.batcher.close(EngineProcessDied("the engine process died before this job ran"))
                os.kill(os.getpid(), signal.SIGTERM)
                return
        close_old_connections()

    def process(self, batch: list[PendingJob]) -> None:
        close_old_connections()  # a connection the database dropped is replaced, not reused
        try:
            outcomes = translation_run_batch([job.payload for job in batch], engines=self.engines.engine)
        except Exception as exc:  # the database failed: every job goes back for a retry
            logger.exception("Batch of %d failed before its results were stored", len(batch))
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            # A TransientFailure or a database error reaches the task thread as an exception,
            # which sends the job again later.
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        self.batches += 1
        self.jobs += len(batch)
        self.last_batch_at = time.time()

    def in_flight(self) -> int:
        """Jobs taken from the broker and not answered yet: waiting in the batcher or computing."""
        return self.batcher.pending() + self.running

    def stop(self) -> None:
        self._stopping.set()
        self.batcher.close()
        self.engines.stop()
