"""The worker's task events, sent by its consumer's event loop: one message per turn of the loop.

Celery's worker buffers its task events (received, started, succeeded, retried) and its event
loop sends what the buffer holds as one ``task.multi`` message at its next turn; a pool thread
that adds an event wakes the loop for it. But once the buffer holds ``buffer_limit`` events
(Celery's default: 24), the thread that adds one flushes the buffer itself, under the
dispatcher's lock. When a batch of 128 jobs ends, its 128 pool threads send their
``task-succeeded`` events together: past the 24th, each one flushes whatever the others added
since the last flush, one small message after another, while the rest wait for the lock.
Measured in the batching worker during a burst (py-spy, tiny model): the pool threads' event
flushes were more of the worker's samples than its claims and stores.

``GroupedTaskEvents`` raises the limit to ``EVENTS_BUFFER_LIMIT`` on the consumer's dispatcher, at
every start of the consumer (a new dispatcher comes with each broker connection), so the event
loop sends a batch's events in one message. Only where the loop flushes (a worker with an event
loop; without one Celery buffers nothing). The loop's flush is Celery's own: the events reach
Flower as soon as before, a turn of the loop later at most.

Since the job intake (workers/job_intake.py) a batch's ends are sent by the device loop that
ran it, one after another, and the same limit keeps them buffered for the event loop's flush.
"""

from __future__ import annotations

from celery import bootsteps

# Events a pool thread may add before it flushes them itself: a batch's worth of ends (and the
# next batch's receipts), at the largest batch a route accepts.
EVENTS_BUFFER_LIMIT = 4096


class GroupedTaskEvents(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c) -> None:
        dispatcher = getattr(c, "event_dispatcher", None)
        if dispatcher is not None and c.hub is not None:
            dispatcher.buffer_limit = max(dispatcher.buffer_limit, EVENTS_BUFFER_LIMIT)
