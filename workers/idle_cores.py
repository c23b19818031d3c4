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

# Batches smaller than this keep their lane's own threads: one sentence computed no faster on
# two threads, and the threads' start-up and synchronisation cost more than they win.
MIN_BATCH = 16


class IdleCores:
    """The count of lanes computing a batch, shared by a worker's engine processes (made by the
    parent, handed to each child as it starts), and the cores the lanes have together."""

    def __init__(self, context, cores: int) -> None:
        self.busy = context.Value("i", 0)
        self.cores = cores


class Lending:
    """One engine process's side of ``IdleCores``: the threads its batches run."""

    def __init__(self, shared: IdleCores, own: int) -> None:
        self.shared, self.own, self.current = shared, own, own

    @contextmanager
    def batch(self, size: int) -> Iterator[None]:
        """Count this lane busy while a batch of ``size`` jobs computes; a large one borrows the
        idle lanes' cores, checked again between its decoding steps."""
        from translation.engines import between_steps_call

        busy = self.shared.busy
        with busy.get_lock():
            busy.value += 1
        borrowing = size >= MIN_BATCH
        try:
            if borrowing:  # from its first step on: the encoder runs on the lane's own threads
                with between_steps_call(self.adjust):
                    yield
            else:
                yield
        finally:
            with busy.get_lock():
                busy.value -= 1
            self._use(self.own)

    def adjust(self) -> None:
        """Take the threads that the lanes busy now leave: the lane's own share at least."""
        self._use(max(self.own, self.shared.cores // max(1, self.shared.busy.value)))

    def _use(self, threads: int) -> None:
        if threads != self.current:
            import torch

            torch.set_num_threads(threads)
            self.current = threads
