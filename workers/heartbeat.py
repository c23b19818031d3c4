"""The worker's heartbeat in the database (``WorkerHeartbeat``): registered at start, ready once
the models are warm and the consumer turns, beaten by a thread of its own while the worker is
healthy, marked stopped at the end.

The beat is the worker's lease on the jobs it claimed: a claim lives as long as its worker's
heartbeat is fresh (``WORKER_HEARTBEAT_STALE_S``). The thread beats every quarter of that, and
only while every device loop is healthy (it turned recently, or its batch has not outlasted
the engine's call timeout) and the Celery consumer turns: a hung model call, a wedged loop, a
consumer that lost the broker, a frozen or dead process all stop the beats, and the worker's
claims are handed over (``translation.recovery``).

Writes are best effort: a database that is down must not stop the worker (it then goes stale,
which is the truth: this worker cannot store results)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models.functions import Now
from django.utils import timezone

from workers.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

FORGET_AFTER = timedelta(days=1)
# The idle device loop turns at least this often (its wait for a batch times out).
LOOP_TURN_S = 0.5


def beat_every_s() -> float:
    return settings.WORKER_HEARTBEAT_STALE_S / 4


class Heartbeat:
    def __init__(
        self, name: str, *, device: str, queues: list[str], consumer_clock=None, clock=time.monotonic, on_ready=None,
        holding=None,
    ) -> None:
        self.name, self.device, self.queues = name, device, queues
        self._clock = clock
        self._ready, self._models_ready, self._models = False, False, []
        self._consumer_clock = consumer_clock
        self._on_ready = on_ready  # told once the worker is ready (its metrics' gauge)
        self._holding = holding  # () -> ids taken from the broker, not claimed yet
        self._consumer_wedged = self._loop_hung = False
        # What each device loop (one per lane) reports, in memory (a loop never waits on the
        # database): when it last turned, and since when its batch runs (monotonic; None: none).
        self._lanes: dict[int, tuple[float, float | None]] = {0: (clock(), None)}
        self._lanes_lock = threading.Lock()
        self._loading_lanes: set[int] = set()  # lanes whose batch waits for a model to load
        self._busy_since = None  # wall clock, for the row
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _consumer_turns(self) -> bool:
        """False while the Celery consumer's loop has stood still for longer than a worker may
        stay silent: then no beat is written, and the worker goes stale (the truth: no job can
        reach it). Said once as its last error; beats resume when the consumer turns again."""
        if self._consumer_clock is None:
            return True
        wedged = self._consumer_clock.stalled_for() > settings.WORKER_HEARTBEAT_STALE_S / 2
        if wedged and not self._consumer_wedged:
            logger.error("The Celery consumer of %s stopped turning; heartbeats stop until it turns", self.name)
            self.error("The Celery consumer stopped turning (wedged): no job can reach this worker.")
        self._consumer_wedged = wedged
        return not wedged

    def _write(self, **fields) -> None:
        try:
            if not WorkerHeartbeat.objects.filter(name=self.name).update(**fields):
                self.register()  # the row was removed (a cleanup, a restored database): write it again
                WorkerHeartbeat.objects.filter(name=self.name).update(**fields)
        except Exception:
            logger.warning("Could not write the heartbeat of %s", self.name, exc_info=True)
            close_old_connections()

    def register(self, *, starting: bool = False) -> None:
        """Write the row. ``starting``: this process holds nothing yet, so what an earlier
        process of this name held (a restart after a crash, the same name on a new host) is
        handed over. Not when the row is written again later (it was removed meanwhile): the
        jobs this process holds are its own."""
        from translation.recovery import claims_release

        now = timezone.now()
        # Housekeeping: workers gone for a day (stopped, or killed and silent) leave the list.
        WorkerHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).exclude(name=self.name).delete()
        WorkerHeartbeat.objects.update_or_create(
            name=self.name,
            defaults={
                "hostname": socket.gethostname(), "pid": os.getpid(), "device": self.device, "queues": self.queues,
                "loaded_models": self._models, "started_at": now, "beat_at": now, "busy_since": None,
                "ready": self._ready, "stopped_at": None,
            },
        )
        if starting:
            claims_release(worker=self.name, reason=f"{self.name} restarted before finishing this job.")

    def consuming(self, queues: list[str]) -> None:
        """The worker consumes ``queues`` now (it follows the routes: one was added)."""
        self.queues = list(queues)
        self._write(queues=self.queues)

    def ready(self, models: list[dict]) -> None:
        """The models are loaded and each has translated its warm-up sentence (the canary).
        The worker is ready once its consumer also turns (it connected to the broker)."""
        self._models_ready, self._models = True, list(models)
        self._write(loaded_models=self._models, beat_at=timezone.now())
        self._ready_when_consuming()

    def models(self, models: list[dict]) -> None:
        """The lanes' models changed: one loaded for a changed route, or one no route names unloaded."""
        self._models = list(models)
        self._write(loaded_models=self._models)

    def _ready_when_consuming(self) -> None:
        consuming = self._consumer_clock is None or self._consumer_clock.started
        if self._models_ready and consuming and not self._ready:
            self._ready = True
            self._write(ready=True, beat_at=timezone.now())
            if self._on_ready is not None:
                self._on_ready()

    # --- reported by the device loops (memory only) ---

    def lanes(self, count: int) -> None:
        """The worker runs ``count`` device loops (lanes 0 .. count-1), each reporting here."""
        now = self._clock()
        with self._lanes_lock:
            self._lanes = {lane: (now, None) for lane in range(count)}

    def _report(self, lane: int, *, running: bool) -> None:
        now = self._clock()
        with self._lanes_lock:
            self._lanes[lane] = (now, now if running else None)

    def idle(self, lane: int = 0) -> None:
        """The loop turned without a batch."""
        self._report(lane, running=False)

    def batch_started(self, lane: int = 0) -> None:
        self._report(lane, running=True)
        if self._busy_since is None:
            self._busy_since = timezone.now()

    def batch_ended(self, lane: int = 0) -> None:
        self._report(lane, running=False)

    def loading(self, lane: int, loading: bool) -> None:
        """Lane ``lane``'s batch waits for its model to load (a route changed since the start):
        allowed as long as a start's loading, then its forward pass is timed afresh."""
        now = self._clock()
        with self._lanes_lock:
            turned = self._lanes.get(lane, (now, None))[0]
            self._lanes[lane] = (turned, now)
            if loading:
                self._loading_lanes.add(lane)
            else:
                self._loading_lanes.discard(lane)

    def _computing(self) -> bool:
        with self._lanes_lock:
            return any(started is not None for _, started in self._lanes.values())

    # --- the beat ---

    def _loop_healthy(self) -> bool:
        """Every loop turned within the staleness limit (plus its own wait), or its batch has not
        outlasted the engine's call timeout: a long but healthy batch keeps the beat."""
        from workers.engine_process import CALL_TIMEOUT_S, START_TIMEOUT_S

        now = self._clock()
        with self._lanes_lock:
            lanes = [(lane, turned, started) for lane, (turned, started) in self._lanes.items()]
            loading = set(self._loading_lanes)
        healthy = all(
            now - started <= (START_TIMEOUT_S if lane in loading else CALL_TIMEOUT_S) if started is not None
            else now - turned <= LOOP_TURN_S + settings.WORKER_HEARTBEAT_STALE_S
            for lane, turned, started in lanes
        )
        if not healthy and not self._loop_hung:
            logger.error("The device loop of %s stopped turning; heartbeats stop", self.name)
            self.error("The device loop stopped turning (a hung model call or a wedged loop).")
        self._loop_hung = not healthy
        return healthy

    def beat(self) -> bool:
        """One beat, if the worker is healthy; returns whether it was written."""
        if not self._loop_healthy():
            return False
        now = Now()  # the database's clock: every host judges beats on the same one
        if not self._consumer_turns():
            # The process is fine, the broker is not: alive for a liveness probe (a restart would
            # not help), but no lease and not ready.
            self._write(loop_at=now)
            return False
        self._ready_when_consuming()
        if not self._computing():
            self._busy_since = None
        # stopped_at cleared and ready restated: a worker presumed dead while it was only slow
        # (its jobs were handed over) comes back as itself.
        holding = sorted(self._holding()) if self._holding is not None else []
        self._write(beat_at=now, loop_at=now, busy_since=self._busy_since, stopped_at=None, ready=self._ready, queues=self.queues,
                    holding=holding)
        return True

    def start(self, holding=None) -> None:
        """Beat from a thread of its own, every quarter of the staleness limit (once the device
        loop runs: while the models load, the worker is not alive yet). ``holding()`` gives the
        jobs taken from the broker and not claimed yet, listed with each beat."""
        now = self._clock()
        with self._lanes_lock:  # the loops' wait so far does not count; a batch running stays so
            self._lanes = {lane: (now, started) for lane, (_, started) in self._lanes.items()}
        if holding is not None:
            self._holding = holding

        def run() -> None:
            while not self._stop.wait(beat_every_s()):
                self.beat()
            close_old_connections()

        self._thread = threading.Thread(target=run, name="heartbeat", daemon=True)
        self._thread.start()

    def error(self, text: str) -> None:
        self._write(last_error=text[:2000], last_error_at=timezone.now())

    def stopped(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._ready = False
        self._write(stopped_at=timezone.now(), ready=False, busy_since=None)
