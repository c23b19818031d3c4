"""Whether the worker's Celery consumer still turns: a bootstep ticks a clock from the
consumer's own event loop every second. The device loop's heartbeat stops while the clock
stands still, so a wedged consumer, or one that lost the broker and is reconnecting (no job
can arrive either way), makes the worker stale, as a hung model call does, instead of a
heartbeat that says all is well."""

from __future__ import annotations

import threading
import time

from celery import bootsteps

TICK_S = 1.0


class ConsumerClock:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None  # None until the consumer starts
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._last = self._clock()

    def retire(self) -> None:
        with self._lock:
            self._last = None

    @property
    def started(self) -> bool:
        """The consumer has turned at least once: it connected to the broker and consumes."""
        with self._lock:
            return self._last is not None

    def stalled_for(self) -> float:
        """Seconds since the last tick beyond what the tick period explains (0 when turning, or not started)."""
        with self._lock:
            if self._last is None:
                return 0.0
            return max(0.0, self._clock() - self._last - TICK_S)


CONSUMER_CLOCK = ConsumerClock()


class ConsumerTick(bootsteps.StartStopStep):
    """Ticks ``CONSUMER_CLOCK`` on the consumer's timer (driven by its event loop)."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c, **kwargs) -> None:
        self.timer_ref = None
        super().__init__(c, **kwargs)

    def start(self, c) -> None:
        CONSUMER_CLOCK.tick()
        self.timer_ref = c.timer.call_repeatedly(TICK_S, CONSUMER_CLOCK.tick)

    def shutdown(self, c) -> None:
        """The worker shuts down (a warm shutdown drains its jobs): nothing to judge any more."""
        self.stop(c)
        CONSUMER_CLOCK.retire()

    def stop(self, c) -> None:
        # The clock keeps its last tick: a consumer restarting after a lost broker connection
        # is not turning until it is back (at shutdown, the heartbeat says "stopped" anyway).
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
