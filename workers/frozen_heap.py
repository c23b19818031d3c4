"""Long-lived objects out of Python's full garbage collections (``gc.freeze``).

A full collection walks every container object of the process: 40-65 ms in a worker (Django,
Celery, kombu and the translation code), during which its consumer's event loop delivers
nothing. Python starts one whenever the objects that survived collections grow by a quarter,
which a burst's messages in flight do; traced during a 512-job burst, one such pause held the
burst's last messages back while a lane took its batch without them (58 jobs, then 70, instead
of 128). Frozen objects are still freed when their last reference goes; garbage cycles among
them are collected only after ``gc.unfreeze()``: an engine process thaws when it unloads a model
(``workers.engine_process``), a worker when its consumer restarts (``FrozenHeap``).
"""

from __future__ import annotations

import gc
import logging

from celery import bootsteps

logger = logging.getLogger(__name__)


def freeze_heap() -> int:
    """Collect, then freeze every object alive now; returns how many are frozen. Called once a
    process has loaded what it keeps (Django, Celery, models)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class FrozenHeap(bootsteps.StartStopStep):
    """Consumer step: freezes the worker's heap once the consumer has its connection and task
    consumers, before its event loop delivers a message. After a reconnect it thaws first, so
    that the old connection's objects (kombu's channel refers to itself through its handlers: a
    cycle) are collected rather than kept frozen."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        if c.restart_count > 0:
            gc.unfreeze()
        # Logged, not printed: Celery redirects the worker's output to its log as warnings.
        logger.info("%d objects kept out of the garbage collector's full collections", freeze_heap())
