"""The device loops: the threads of a worker that turn batches into forward passes.

The worker's consumer hands the jobs it takes from the broker to the batcher (workers/job_intake.py;
Celery's pool threads, for the few messages that take Celery's own path); each loop takes
batches from the batcher, runs each through the execution layer (one claim, one forward pass
per group in its engine process, one write) and answers every job's future.

A worker runs one loop per lane. On a CPU (``TRANSLATION_CPU_LANES``) each lane is an engine
process of its own with a share of the cores, so two batches compute side by side, the
CTranslate2 way (``inter_threads`` × ``intra_threads``). On a GPU (``TRANSLATION_GPU_LANES``,
one by default) each lane is an instance of the models on the card, Triton's way
(``instance_group`` ``count``): one lane's forward pass computes while another claims, stores,
or launches its own kernels. On a CPU, on the 2-core benchmark
machine, two one-thread lanes computed 247 sentences/s at batch 128 where one two-thread
process computed 160-173: a forward pass split over two threads waits for the slower of them at
every step, and on shared cores one of them is often not running.
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
from workers.loaded_models import LoadedModels
from workers.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


class DeviceLoop(threading.Thread):
    def __init__(
        self, batcher: Batcher, engines: EngineProcess, heartbeat: Heartbeat | None = None,
        metrics: WorkerMetrics | None = None, *, lane: int = 0, models: LoadedModels | None = None,
    ) -> None:
        super().__init__(name=f"device-loop-{lane}", daemon=True)
        self.batcher, self.engines, self.heartbeat, self.metrics = batcher, engines, heartbeat, metrics
        self.models = models  # the worker's loaded models: between batches, this lane lets go of unneeded ones
        self._routes_unread = False
        if heartbeat is not None:  # a batch waiting for its model to load is not a hung one
            engines.on_loading = lambda loading: heartbeat.loading(lane, loading)
        self.lane = lane
        self.running = 0  # jobs of the batch being computed
        self._stopping = threading.Event()
        self.batches = 0
        self.jobs = 0
        self.last_batch_at: float | None = None

    def run(self) -> None:
        while not self._stopping.is_set() and not self.batcher.closed:  # closed: the worker stops
            if self.metrics:
                self.metrics.loop_turned()
            batch = self.batcher.next_batch(timeout=0.5)
            if batch:
                if self.heartbeat:
                    self.heartbeat.batch_started(self.lane)
                self.running = len(batch)
                try:
                    self.process(batch)
                finally:
                    self.running = 0
                    self.batcher.batch_done()
                if self.heartbeat:
                    self.heartbeat.batch_ended(self.lane)
                if self.metrics:
                    self.metrics.batch_ended(self.lane)
            else:
                if self.heartbeat:
                    self.heartbeat.idle(self.lane)
                if self.models is not None:  # nothing to compute: load what a changed route names
                    self.load_wanted_models()
            if self.models is not None:  # after a batch too: a busy lane lets go of its old models as well
                self.unload_idle_models()
            if not self.engines.alive() and not self._stopping.is_set():
                # Without its models the worker can only fail jobs: stop it (a warm shutdown
                # gives its unfinished jobs back to the broker) and let its supervisor restart it.
                logger.critical("The engine process died; stopping this worker")
                if self.heartbeat:
                    self.heartbeat.error("The engine process died; the worker stopped for its supervisor to restart it.")
                self.batcher.close(EngineProcessDied("the engine process died before this job ran", during_call=False))
                os.kill(os.getpid(), signal.SIGTERM)
                return
        close_old_connections()

    def load_wanted_models(self) -> None:
        self._follow_routes(self.models.load_wanted, "load")
        if self.heartbeat:  # a load is not a batch: the lane turned
            self.heartbeat.idle(self.lane)

    def unload_idle_models(self) -> None:
        self._follow_routes(self.models.unload_idle, "unload")

    def _follow_routes(self, look, what: str) -> None:
        """``look(lane)``; the routes not readable (the database is away): the models stay as
        they are, looked at again later, and said once per outage."""
        try:
            look(self.lane)
            self._routes_unread = False
        except EngineProcessDied:  # seen below, as after a batch
            pass
        except Exception:
            if not self._routes_unread:
                logger.warning("Could not look for models to %s in lane %d; trying again", what, self.lane, exc_info=True)
            self._routes_unread = True
            close_old_connections()

    def process(self, batch: list[PendingJob]) -> None:
        close_old_connections()  # a connection the database dropped is replaced, not reused
        try:
            outcomes = translation_run_batch([job.payload for job in batch], engines=self.engines.engine)
        except Exception as exc:  # the database failed: every job goes back for a retry
            logger.exception("Batch of %d failed before its results were stored", len(batch))
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            # A TransientFailure or a database error reaches the job's message handler (the job
            # intake, or a task thread) as an exception, which sends the job again later.
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        self.batches += 1
        self.jobs += len(batch)
        self.last_batch_at = time.time()

    def stop(self) -> None:
        self._stopping.set()
        self.batcher.close()
        self.engines.stop()
