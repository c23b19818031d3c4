"""A CPU worker's lanes lend their idle cores: a lane computing a batch while others have none
takes their cores too, and gives them back when they start.

Each lane has an equal share of the cores (one thread each on the 2-core machines). While only
one lane computes (a burst's last batch, any batch in a quiet hour), the other lanes' cores sit
idle: two threads computed a 128-job batch of the small model 1.4-1.8 times as fast as one on
the 2-core machine, a batch of one sentence no faster (docs/benchmarks.md). So a lane computing a
batch of at least ``MIN_BATCH`` jobs runs ``cores // busy lanes`` threads, counted after each of
its decoding steps: when another lane starts a batch, the first gives the borrowed threads back
within one step (tens of milliseconds), and two lanes do not share a core for longer than that.
The encoder's pass, before the first step, keeps the lane's own threads: a batch that borrowed
for it would hold the cores for its whole length whoever started meanwhile (measured: two lanes
started together then ran about a tenth slower). Every batch counts as busy, small ones too;
only the large ones borrow.

A lane counts as idle only ``IDLE_AFTER_S`` after its last batch ended. Under a steady stream of
batches a lane waits 20-50 ms between two of them while its worker stores the results and
claims the next jobs, and that wait is not an idle core: the worker, PostgreSQL and Redis use
it. Lent at once, the other lane's two threads shared both cores with them until its next step:
over 2,048-job bursts on the 2-core machine the model took 12-24 % more CPU per sentence than
in the raw rounds and the pipeline made 0.73-0.78 of the raw model's throughput; with this wait
0.84-0.86 (medians of three runs), with no lending at all 0.84-0.88, the model's CPU per
sentence as in the raw rounds in both (docs/benchmarks.md, eighteenth session).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Batches smaller than this keep their lane's own threads: one sentence computed no faster on
# two threads, and the threads' start-up and synchronisation cost more than they win.
MIN_BATCH = 16

# How long after its last batch a lane counts as idle: longer than the 20-50 ms a lane waits
# between batches while jobs keep coming (its worker storing and claiming, on these cores).
IDLE_AFTER_S = 0.15


class IdleCores:
    """Which of a worker's CPU lanes compute a batch now, or did a moment ago: per lane, in
    memory their engine processes share (made by the parent, handed to each child as it starts),
    the ``time.monotonic()`` until which it counts as busy (infinite while a batch computes), and
    the cores the lanes have together. Each lane writes only its own slot, so no lock is taken: a
    process killed at any point cannot leave the others waiting on one."""

    def __init__(self, context, cores: int, lanes: int) -> None:
        self.slots = context.RawArray("d", lanes)  # 0.0: idle since the start
        self.borrowed = context.RawArray("d", lanes)  # seconds each lane computed on borrowed cores
        self.cores = cores

    def lane(self, index: int) -> LaneCores:
        return LaneCores(self, index)

    def start(self, index: int) -> None:
        self.slots[index] = math.inf

    def end(self, index: int, *, now: float | None = None) -> None:
        self.slots[index] = (time.monotonic() if now is None else now) + IDLE_AFTER_S

    def busy(self, *, now: float | None = None) -> int:
        """The lanes computing a batch or done with one less than ``IDLE_AFTER_S`` ago."""
        now = time.monotonic() if now is None else now
        return sum(1 for until in self.slots if until > now)

    def borrowed_seconds(self) -> list[float]:
        """How long each lane has computed with more threads than its own (counted each time it
        gives them back): the worker's ``translation_worker_lane_borrowed_seconds_total``."""
        return list(self.borrowed)


@dataclass(frozen=True)
class LaneCores:
    """One lane's place in ``IdleCores``."""

    shared: IdleCores
    index: int


class Lending:
    """One engine process's side of ``IdleCores``: the threads its batches run."""

    def __init__(self, lane: LaneCores, own: int) -> None:
        self.lane, self.own, self.current = lane, own, own
        self.borrowing_since = 0.0

    @contextmanager
    def batch(self, size: int) -> Iterator[None]:
        """Count this lane busy while a batch of ``size`` jobs computes and ``IDLE_AFTER_S``
        after (0: a model loading or warming up, which borrows nothing); a batch of
        ``MIN_BATCH`` or more borrows the idle lanes' cores, checked again after each of its
        decoding steps."""
        from translation.engines import between_steps_call

        shared, index = self.lane.shared, self.lane.index
        shared.start(index)
        try:
            if size >= MIN_BATCH:  # from its first step on: the encoder runs on the lane's own threads
                with between_steps_call(self.adjust):
                    yield
            else:
                yield
        finally:
            shared.end(index)
            self._use(self.own)

    def adjust(self) -> None:
        """Take the threads that the lanes busy now leave: the lane's own share at least."""
        self._use(max(self.own, self.lane.shared.cores // max(1, self.lane.shared.busy())))

    def _use(self, threads: int) -> None:
        if threads != self.current:
            import torch

            torch.set_num_threads(threads)
            now = time.monotonic()
            if self.current == self.own:
                self.borrowing_since = now
            elif threads == self.own:
                self.lane.shared.borrowed[self.lane.index] += now - self.borrowing_since
            self.current = threads
