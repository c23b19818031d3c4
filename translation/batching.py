"""The dynamic batcher: gathers translation jobs into batches that share one forward pass.

Like Triton's dynamic batcher, a batch is released when it is full (``max_batch_size`` jobs or
``max_batch_tokens`` input tokens) or when its oldest job has waited ``max_wait_s`` — each job's
own deadline, not a fixed timer. Jobs are grouped by what must share a forward pass (model,
precision, language pair); a released batch is sorted by length so padding stays small.

Plain Python: no Django, no Celery. Producers (the worker's consumer, a task thread, the ledger
intake) ``submit`` and are answered through the returned future; consumers (the device loops, one per lane) call ``next_batch``, and
``batch_done`` once the batch is computed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

# Defaults, after Triton's: a few milliseconds of waiting buys full batches under load and
# costs a light-load job at most that much latency.
DEFAULT_MAX_BATCH_SIZE = 128
DEFAULT_MAX_WAIT_S = 0.005
# Input tokens per batch: bounds activation memory when long messages arrive together
# (TGI's max_batch_total_tokens). 128 jobs of ~64 tokens fit.
DEFAULT_MAX_BATCH_TOKENS = 8192
# How long a group past its deadline may be held back while another lane computes (see
# ``_due``), until a batch has been timed: after that, as long as recent batches took (so a
# quiet pair waits behind a busy pair's lanes no longer than behind one lane's batch), at most
# MAX_HOLD_S.
DEFAULT_HOLD_S = 0.2
MAX_HOLD_S = 5.0


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate for budgeting: about four characters per subword token."""
    return max(1, len(text) // 4)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"max_batch_size must be 1..4096, not {self.max_batch_size}")
        if not 0 <= self.max_wait_s <= 10:
            raise ValueError(f"max_wait_s must be 0..10 seconds, not {self.max_wait_s}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive, not {self.max_batch_tokens}")

    def within(self, limit: BatchPolicy) -> BatchPolicy:
        """This policy with its batch size and token budget capped by ``limit``'s (a worker's
        thread pool and memory are sized for its own maximum)."""
        return BatchPolicy(
            max_batch_size=min(self.max_batch_size, limit.max_batch_size),
            max_wait_s=self.max_wait_s,
            max_batch_tokens=min(self.max_batch_tokens, limit.max_batch_tokens),
        )


@dataclass
class PendingJob:
    """One job waiting for a batch. ``key`` says which jobs may share a forward pass."""

    key: Hashable
    payload: Any
    text: str
    tokens: int = 0
    arrived: float = 0.0
    future: Future = field(default_factory=Future)
    # The route's own batch size and wait, when it has them (the batcher's policy otherwise).
    policy: BatchPolicy | None = None
    # Handed over from a lost worker: it goes to the front of its group, into the next batch.
    urgent: bool = False
    # Seconds it already waited for a batch before it was submitted (since it was queued: the
    # send and delivery, or the wake-up and claim). Its wait counts from then, as Triton counts a request's queue
    # delay from its arrival; capped at the policy's wait, so another host's clock cannot put
    # it ahead of older jobs or past its deadline by more than that.
    waited: float = 0.0

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = estimate_tokens(self.text)


class Batcher:
    def __init__(
        self, policy: BatchPolicy | None = None, *, clock: Callable[[], float] = time.monotonic,
        max_hold_s: float | None = None,
    ) -> None:
        """``max_hold_s``: a fixed limit on holding a group back (default: the recent batches'
        duration, see ``hold_s``)."""
        self.policy = policy or BatchPolicy()
        self._max_hold_s = max_hold_s
        self._batch_s: float | None = None  # moving average of how long a taken batch took
        self._clock = clock
        self._groups: dict[Hashable, list[PendingJob]] = {}
        # Each group follows the policy of its latest job: a route's new knobs apply from the
        # first job sent after the change.
        self._policies: dict[Hashable, BatchPolicy] = {}
        self._ready = threading.Condition()
        self._closed = False
        # Consumers (threads) computing a batch they took: each until it asks for the next one
        # or says ``batch_done``.
        self._computing: dict[int, float] = {}  # consumer thread -> when it took its batch

    def submit(self, job: PendingJob) -> Future:
        """Queue ``job``; its future receives the result the device loop sets."""
        self.submit_all([job])
        return job.future

    def submit_all(self, jobs: list[PendingJob]) -> None:
        """Queue ``jobs`` at once (one lock, one wake-up of the consumers: a batch's worth
        submitted one by one would wake an idle consumer for each)."""
        with self._ready:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            now = self._clock()
            for job in jobs:
                policy = self._policies[job.key] = job.policy.within(self.policy) if job.policy else self.policy
                job.arrived = now - min(max(0.0, job.waited), policy.max_wait_s)
                group = self._groups.setdefault(job.key, [])
                if job.urgent:  # first in line, keeping the group's deadline (its oldest job's)
                    job.arrived = min(job.arrived, group[0].arrived) if group else job.arrived
                    group.insert(0, job)
                else:
                    if group and job.arrived < group[0].arrived:  # the group's deadline is its oldest job's
                        group[0].arrived = job.arrived
                    group.append(job)
            if jobs:
                self._ready.notify_all() if len(jobs) > 1 else self._ready.notify()

    def payloads(self) -> list:
        """The payloads of the jobs waiting for a batch."""
        with self._ready:
            return [job.payload for jobs in self._groups.values() for job in jobs]

    def pending(self) -> int:
        with self._ready:
            return sum(len(jobs) for jobs in self._groups.values())

    def close(self, error: BaseException | None = None) -> None:
        """Refuse new jobs and answer every waiting job with ``error`` (its submitter then
        gives the job back for a retry) instead of leaving it to time out."""
        with self._ready:
            self._closed = True
            waiting = [job for jobs in self._groups.values() for job in jobs]
            self._groups.clear()
            self._policies.clear()
            self._ready.notify_all()
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(error or RuntimeError("the batcher closed before this job ran"))

    def next_batch(self, timeout: float | None = None) -> list[PendingJob]:
        """Block until a batch is due and return it (sorted by length), or [] on timeout/close."""
        give_up = None if timeout is None else self._clock() + timeout
        with self._ready:
            self._finished(threading.get_ident())
            while not self._closed:
                now = self._clock()
                key, wait = self._due(now)
                if key is not None:
                    self._computing[threading.get_ident()] = now
                    return self._take(key)
                if give_up is not None:
                    if now >= give_up:
                        return []
                    wait = min(wait, give_up - now) if wait is not None else give_up - now
                self._ready.wait(wait)
            return []

    def hold_s(self) -> float:
        """How long a group past its deadline may wait while another lane computes."""
        if self._max_hold_s is not None:
            return self._max_hold_s
        return DEFAULT_HOLD_S if self._batch_s is None else min(self._batch_s, MAX_HOLD_S)

    @property
    def closed(self) -> bool:
        return self._closed

    def batch_done(self) -> None:
        """The calling consumer finished computing the batch it took (asking for the next batch
        says so too)."""
        with self._ready:
            self._finished(threading.get_ident())

    def _finished(self, consumer: int) -> None:
        if consumer in self._computing:
            took = self._clock() - self._computing.pop(consumer)
            self._batch_s = took if self._batch_s is None else 0.8 * self._batch_s + 0.2 * took
            self._ready.notify_all()  # a group held back for this batch may go now

    def _due(self, now: float) -> tuple[Hashable | None, float | None]:
        """The group to release now, else how long until the earliest deadline (None: none to
        wait for).

        Among the groups that are due (full, over the token budget, or past their oldest job's
        deadline), the one whose oldest job arrived first goes first: a busy pair cannot starve
        a quiet one. Several consumers (a CPU worker's lanes) share the same cores: while one
        computes, a group past its deadline but not full waits for more jobs or for that batch
        to end, instead of splitting the cores into small batches, which cost more per job — at
        most ``hold_s()`` longer. A job handed over from a lost worker has waited enough.
        """
        earliest, due, due_since = None, None, None
        for key, jobs in self._groups.items():
            policy = self._policies[key]
            oldest = jobs[0].arrived
            deadline = oldest + policy.max_wait_s
            if self._computing and not jobs[0].urgent:
                deadline += self.hold_s()
            full = len(jobs) >= policy.max_batch_size or sum(j.tokens for j in jobs) >= policy.max_batch_tokens
            if full or deadline <= now:
                if due_since is None or oldest < due_since:
                    due, due_since = key, oldest
            else:
                earliest = deadline if earliest is None else min(earliest, deadline)
        if due is not None:
            return due, None
        return None, (None if earliest is None else earliest - now)

    def _take(self, key: Hashable) -> list[PendingJob]:
        """Up to a full batch of the group's oldest jobs, within the token budget."""
        jobs, policy = self._groups[key], self._policies[key]
        taken, tokens = [], 0
        for job in jobs:
            if len(taken) == policy.max_batch_size or (taken and tokens + job.tokens > policy.max_batch_tokens):
                break
            taken.append(job)
            tokens += job.tokens
        remaining = jobs[len(taken):]
        if remaining:
            # The group's deadline is its oldest job's: one that waited before it came (ledger
            # dispatch) may stand behind a newer one.
            remaining[0].arrived = min(job.arrived for job in remaining)
            self._groups[key] = remaining
        else:
            del self._groups[key]
            del self._policies[key]
        return sorted(taken, key=lambda job: job.tokens)


def run_isolated(items: list, run: Callable[[list], list], *, fatal: tuple[type[BaseException], ...] = ()) -> list:
    """``run(items)`` as one call; when it raises, the halves separately, down to single items.

    One bad input does not fail its neighbours: every item gets its own result, or the
    exception its own run raised. A healthy batch costs one call; a single poisoned item
    among n costs about 2·log2(n) more. An exception of a ``fatal`` type (the engine itself
    lost: no further call can answer) is raised as it is, not isolated.
    """
    if not items:
        return []
    try:
        results = run(items)
    except fatal:
        raise
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        middle = len(items) // 2
        return run_isolated(items[:middle], run, fatal=fatal) + run_isolated(items[middle:], run, fatal=fatal)
    if len(results) != len(items):
        raise RuntimeError(f"run returned {len(results)} results for {len(items)} items")
    return results
