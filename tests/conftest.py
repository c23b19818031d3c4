"""Shared fixtures: tiny models on disk, a clean Redis database, a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from translation.tiny_models import TinyModels, write_tiny_models

ROOT = Path(__file__).resolve().parent.parent
WORKER_NAME = "test-worker@localhost"
WORKER_START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    return write_tiny_models(settings.MODELS_DIR, progress=lambda line: None)


@pytest.fixture(scope="session")
def broker() -> redis.Redis:
    """The test Redis database, emptied so no job of an earlier run reaches the worker."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    return client


def queue_drained(broker: redis.Redis, queue: str) -> bool:
    """No message waiting on ``queue`` and none taken but unacknowledged."""
    return broker.llen(queue) == 0 and broker.hlen("unacked") == 0


def wait_for(check, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker, tiny_models, broker):
    """A real worker process (``python -m workers.main``) on the test database and Redis."""
    from django.db import connection

    from cs_portal.celery import app

    db = connection.settings_dict
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        PYTHONUNBUFFERED="1",
    )
    log = Path(settings.DATA_DIR) / "test-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.main", "--queues", "all", "--name", WORKER_NAME, "--concurrency", "2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not app.control.ping(destination=[WORKER_NAME], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test worker did not start; its log:\n{log.read_text()[-3000:]}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def api_client_key(db) -> tuple[object, str]:
    from cs_portal.portal.services import api_client_create

    return api_client_create(name="test-widget")
