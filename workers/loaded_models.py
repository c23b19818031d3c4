"""What a worker's lanes hold, as the worker reports it, and the models it lets go of.

A worker loads and warms the models its queues' routes name before it consumes. A route changed
later (another model, another precision) loads its model in a lane's engine process with the
first batch that needs it. Either way every loaded model is reported, with its memory: the
``models`` inspect command, the heartbeat row (admin, operations page, ``manage.py status``)
and the ``translation_worker_model_memory_bytes`` gauge.

A model that no route of the worker's queues names any more, disabled routes included (their
models stay warm for a switch), and that no batch has used for ``TRANSLATION_MODEL_UNLOAD_IDLE_S``
is unloaded from the lane, its GPU memory given back. Jobs queued before the route changed keep
the model they were queued with, and would load it again. The check runs in each lane's own
thread between batches, so it never waits on a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from translation.engines import EngineSpec
from workers.engine_process import EngineProcess, EngineProcessDied, ModelMemory, Warmup

logger = logging.getLogger(__name__)

# How often a lane looks for models to let go of, and (with nothing to compute) to load ahead.
CHECK_EVERY_S = 5.0
# A model that failed to load ahead of its jobs is tried again after this long, doubling at
# each failure up to an hour (its jobs, if any come, still load it themselves).
RETRY_LOAD_S = 300.0
RETRY_LOAD_MAX_S = 3600.0


def on_this_host(model: str) -> bool:
    """Whether ``model`` loads without a download: a checkpoint directory, or a hub id whose
    files are in the local cache (``HF_HOME``)."""
    from pathlib import Path

    if Path(model).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = [try_to_load_from_cache(model, name) for name in ("config.json", *WEIGHTS_FILES)]
    except HFValidationError:  # not a hub id either
        return False
    # Its configuration and weights: a repository whose download stopped half-way would download.
    return isinstance(cached[0], str) and any(isinstance(path, str) for path in cached[1:])


WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def models_held(engines: list[EngineProcess]) -> list[dict]:
    """Each model the lanes hold: model, precision, device, MiB of all its lanes together, how
    many lanes hold it (``copies``) and the MiB of it they share."""
    held: list[dict] = []
    memories = [engine.memory for engine in engines]  # each lane replaces its own, never changes it
    for spec in sorted({spec for memory in memories for spec in memory}, key=lambda s: (s.model, s.precision)):
        lanes = [memory[spec] for memory in memories if spec in memory]
        size = ModelMemory.held_together(lanes)
        held.append({"model": spec.model, "precision": spec.precision, "device": spec.device,
                     "memory_mib": round(size / 2**20, 1), "copies": len(lanes),
                     "shared_mib": round(max(lane.shared for lane in lanes) / 2**20, 1), "bytes": size})
    return held


def idle_models(
    last_used: dict[EngineSpec, float], *, wanted: Iterable[EngineSpec], now: float, idle_s: float
) -> list[EngineSpec]:
    """Of the models loaded (``last_used``: when a batch last used each), those to unload: not
    ``wanted`` by a route, and unused for ``idle_s`` (0: never unload)."""
    if idle_s <= 0:
        return []
    wanted = set(wanted)
    return sorted((spec for spec, used in last_used.items() if spec not in wanted and now - used >= idle_s),
                  key=lambda spec: (spec.model, spec.precision))


class LoadedModels:
    """The worker's report of its lanes' models, kept current as lanes load and unload them."""

    def __init__(
        self, engines: list[EngineProcess], *, device: str, queues, idle_s: float, heartbeat=None, metrics=None,
        clock=time.monotonic, batching: bool = True,
    ) -> None:
        """``queues()``: the queues the worker consumes now (it may follow new routes);
        ``batching``: whether the worker batches (a model loaded ahead then computes a full
        batch, as at the start; ``workers.warmup``)."""
        from workers.control import LOADED_MODELS

        self.engines, self.device, self._queues, self.idle_s = engines, device, queues, idle_s
        self.batching = batching
        self.heartbeat, self.metrics, self._clock = heartbeat, metrics, clock
        self.held: list[dict] = LOADED_MODELS  # what the "models" inspect command answers
        self._lock = threading.Lock()
        self._checked: dict[int, float] = {}  # lane -> when it last looked for models to unload
        self._load_checked: dict[int, float] = {}  # lane -> when it last looked for models to load
        # (lane, model) -> (when it may be tried again, the wait after another failure)
        self._failed: dict[tuple[int, EngineSpec], tuple[float, float]] = {}
        # One lane loads ahead at a time: the others go on serving their queues meanwhile.
        self._loading_ahead = threading.Lock()
        for engine in engines:
            engine.on_change = self.report

    def report(self) -> list[dict]:
        """Publish what the lanes hold now; returns it."""
        with self._lock:
            before = {(model["model"], model["precision"], model["device"]) for model in self.held}
            held = models_held(self.engines)
            self.held[:] = [{key: value for key, value in model.items() if key != "bytes"} for model in held]
            if self.metrics is not None:
                for model in held:
                    self.metrics.model_loaded(model["model"], model["precision"], model["device"], model["bytes"])
                for gone in before - {(model["model"], model["precision"], model["device"]) for model in held}:
                    self.metrics.model_unloaded(*gone)
            held = list(self.held)
        if self.heartbeat is not None:  # rare (a model loaded or unloaded): written at once, outside the lock
            self.heartbeat.models(held)
        return held

    def wanted(self) -> set[EngineSpec]:
        """The models the routes of the worker's queues name, disabled routes included."""
        return {warmup.spec for warmup in self._warmups()}

    def _warmups(self) -> list[Warmup]:
        from workers.warmup import warmups_for_queues

        return warmups_for_queues(set(self._queues()), device=self.device, quiet=True, batching=self.batching)

    def load_wanted(self, lane: int) -> EngineSpec | None:
        """In lane ``lane``'s own thread, while it has nothing to compute: load and warm one model
        a route names that the lane does not hold yet (a route changed since the start), so its
        jobs do not wait for the load. Only a checkpoint on this host (a directory, or a hub id
        in the local cache) is loaded ahead; one that failed is tried again after
        ``RETRY_LOAD_S``. At most every ``CHECK_EVERY_S``; returns what it loaded."""
        now = self._clock()
        if now - self._load_checked.get(lane, float("-inf")) < CHECK_EVERY_S:
            return None
        self._load_checked[lane] = now
        if not self._loading_ahead.acquire(blocking=False):  # another lane loads: this one serves
            return None
        try:
            return self._load_one(lane, now)
        finally:
            self._loading_ahead.release()

    def _load_one(self, lane: int, now: float) -> EngineSpec | None:
        engine = self.engines[lane]
        for warmup in self._warmups():
            spec = warmup.spec
            if spec in engine.memory or now < self._failed.get((lane, spec), (float("-inf"), 0.0))[0]:
                continue
            if not on_this_host(spec.model):  # a download: left to the first job that needs it
                continue
            try:
                memory = engine.warm(warmup)
            except EngineProcessDied:
                raise
            except Exception as exc:
                wait = self._load_failed(lane, spec, now)
                logger.warning("Could not load %s [%s] ahead of its jobs in lane %d (again in %.0f s): %s: %s",
                               spec.model, spec.precision, lane, wait, type(exc).__name__, exc)
                continue
            self._failed.pop((lane, spec), None)
            logger.info("Loaded %s [%s] in lane %d ahead of its jobs: %.1f MiB", spec.model, spec.precision, lane,
                        memory.total / 2**20)
            return spec  # one per look: the lane goes back to its queue
        return None

    def _load_failed(self, lane: int, spec: EngineSpec, now: float) -> float:
        """``spec`` did not load in ``lane``: not tried ahead again for a while, twice as long at
        each failure; returns that wait."""
        wait = self._failed.get((lane, spec), (0.0, RETRY_LOAD_S))[1]
        self._failed[(lane, spec)] = (now + wait, min(2 * wait, RETRY_LOAD_MAX_S))
        return wait

    def failed_at_start(self, spec: EngineSpec) -> None:
        """``spec`` did not load at start: not loaded ahead before ``RETRY_LOAD_S`` (its jobs
        still load it themselves)."""
        now = self._clock()
        for lane in range(len(self.engines)):
            self._load_failed(lane, spec, now)

    def unload_idle(self, lane: int) -> list[EngineSpec]:
        """In lane ``lane``'s own thread, between batches: unload its models no route wants that
        have been idle long enough. At most every ``CHECK_EVERY_S``; returns what it unloaded."""
        now = self._clock()
        if self.idle_s <= 0 or now - self._checked.get(lane, float("-inf")) < CHECK_EVERY_S:
            return []
        self._checked[lane] = now
        engine = self.engines[lane]
        loaded = {spec: used for spec, used in engine.last_used.items() if spec in engine.memory}
        if not idle_models(loaded, wanted=(), now=now, idle_s=self.idle_s):  # the routes are read only when one could go
            return []
        unloaded = []
        for spec in idle_models(loaded, wanted=self.wanted(), now=now, idle_s=self.idle_s):
            engine.unload(spec)
            logger.info("Unloaded %s [%s] from lane %d: no route of this worker names it, unused for %.0f s",
                        spec.model, spec.precision, lane, self.idle_s)
            unloaded.append(spec)
        return unloaded
