"""Gunicorn hooks for Prometheus's multiprocess mode (``--config python:cs_portal.gunicorn_conf``).

With several web processes, each writes its counters to ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` adds them up; the files of a previous run are removed at start, and a process that
exits is marked dead so that its gauges leave the sum.
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
