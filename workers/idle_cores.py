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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Batches smaller than this keep their lane's own threads: one sentence computed no faster on
# two threads, and the threads' start-up and synchronisation cost more than they win.
MIN_BATCH = 16


class IdleCores:
    """Which of a worker's CPU lanes compute a batch now: a byte per lane in memory their engine
    processes share (made by the parent, handed to each child as it starts), and the cores the
    lanes have together. Each lane writes only its own byte, so no lock is taken: a process
    killed at any point cannot leave the others waiting on one."""

    def __init__(self, context, cores: int, lanes: int) -> None:
        self.slots = context.RawArray("b", lanes)
        self.cores = cores

    def lane(self, index: int) -> LaneCores:
        return LaneCores(self, index)

    def busy(self) -> int:
        return sum(self.slots)


@dataclass(frozen=True)
class LaneCores:
    """One lane's place in ``IdleCores``."""

    shared: IdleCores
    index: int


class Lending:
    """One engine process's side of ``IdleCores``: the threads its batches run."""

    def __init__(self, lane: LaneCores, own: int) -> None:
        self.lane, self.own, self.current = lane, own, own

    @contextmanager
    def batch(self, size: int) -> Iterator[None]:
        """Count this lane busy while a batch of ``size`` jobs computes (0: a model loading or
        warming up, which borrows nothing); a batch of ``MIN_BATCH`` or more borrows the idle
        lanes' cores, checked again after each of its decoding steps."""
        from translation.engines import between_steps_call

        slots, index = self.lane.shared.slots, self.lane.index
        slots[index] = 1
        try:
            if size >= MIN_BATCH:  # from its first step on: the encoder runs on the lane's own threads
                with between_steps_call(self.adjust):
                    yield
            else:
                yield
        finally:
            slots[index] = 0
            self._use(self.own)

    def adjust(self) -> None:
        """Take the threads that the lanes busy now leave: the lane's own share at least."""
        self._use(max(self.own, self.lane.shared.cores // max(1, self.lane.shared.busy())))

    def _use(self, threads: int) -> None:
        if threads != self.current:
            import torch

            torch.set_num_threads(threads)
            self.current = threads
