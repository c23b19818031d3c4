"""Gunicorn hooks (``--config python:cs_portal.gunicorn_conf``).

Prometheus's multiprocess mode: with several web processes, each writes its counters to
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up; the files of a previous run are
removed at start, and a process that exits is marked dead so that its gauges leave the sum.

Each web process freezes what it has loaded out of Python's full garbage collections
(``workers.frozen_heap``), as the workers do.
"""

from __future__ import annotations

import os
from pathlib import Path


def on_starting(server) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # only prometheus_client's own files
            stale.unlink()


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:
    """A web process has loaded the portal: its URL configuration's modules (views, the admin,
    forms) are loaded too, then everything alive is frozen. A full collection otherwise walks
    those objects (about 112,000) each time, 50 ms on the 2-core machine, while every request
    of the process waits (its threads share the interpreter)."""
    try:
        from django.urls import get_resolver

        from workers.frozen_heap import freeze_heap

        _ = get_resolver().url_patterns  # imports the views of every URL
        worker.log.info("Froze %d objects out of full garbage collections", freeze_heap())
    except Exception:  # only a saving: the process serves all the same (a broken URL is its request's error)
        worker.log.exception("Could not freeze the heap")
