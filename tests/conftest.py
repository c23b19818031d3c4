"""Shared fixtures: tiny models on disk, a clean Redis database, a real worker process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from translation.tiny_models import TinyModels, write_tiny_models
from workers.lifecycle import free_port, free_ports, stop_process, wait_until_consuming  # noqa: F401 (for the tests)

ROOT = Path(__file__).resolve().parent.parent
WORKER_NAME = "test-worker@localhost"
# Besides every routed queue, the worker consumes the spare queue that routing tests move a pair to.
SPARE_QUEUE = "translate.en.b"
WORKER_START_TIMEOUT_S = 120


# The session worker's Prometheus port.
WORKER_METRICS_PORT = free_port()
WORKER_LANES = 2  # the session's worker computes in two lanes, whatever the machine's cores


def _deadlocked(error: BaseException | None) -> bool:
    while error is not None:
        if getattr(error, "sqlstate", None) == "40P01":  # PostgreSQL's deadlock_detected
            return True
        error = error.__cause__
    return False


def _flush_retrying_deadlocks() -> None:
    """A transactional test's data is emptied by one TRUNCATE of every table, while the session's
    worker process keeps using the same database (heartbeats, its reconciler, claims). A worker
    query that has locked one table and waits for another the TRUNCATE already holds is a
    deadlock; PostgreSQL ends one side, and when that side is the TRUNCATE the test fails at its
    teardown though nothing it checked went wrong. The flush is one transaction: try it again."""
    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def fixture_teardown(self) -> None:
        for attempt in range(1, 6):
            try:
                return flush(self)
            except CommandError as error:
                if attempt == 5 or not _deadlocked(error.__cause__):
                    raise
                time.sleep(0.1 * attempt)

    TransactionTestCase._fixture_teardown = fixture_teardown


_flush_retrying_deadlocks()


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    return write_tiny_models(settings.MODELS_DIR, progress=lambda line: None)


DB_FIXTURES = {"db", "transactional_db", "live_server", "django_db_reset_sequences", "django_db_serialized_rollback"}


def initial_routes() -> None:
    """The test settings' initial routes (the tiny models), as ``import_routes --if-empty``
    loads them at a first start-up."""
    from translation.models import LanguageRoute
    from translation.routing import routes_changed
    from translation.services import routes_import

    routes_changed()
    if not LanguageRoute.objects.exists():
        routes_import(settings.TRANSLATION_ROUTES)


def route_update(source: str, target: str, **fields):
    """Change the enabled route of a pair as the admin would: validated, saved, followed at once."""
    from translation.models import LanguageRoute

    row = LanguageRoute.objects.get(source_language=source, target_language=target, enabled=True)
    for name, value in fields.items():
        setattr(row, name, value)
    row.full_clean()
    row.save()
    return row


@pytest.fixture(autouse=True)
def language_routes(request):
    """Every test that uses the database starts from the initial routes; its own changes are
    rolled back (or flushed) with the rest of its data, and no process cache outlives it."""
    from translation.routing import routes_changed

    if request.node.get_closest_marker("django_db") or DB_FIXTURES & set(request.fixturenames):
        request.getfixturevalue("_django_db_helper")
        initial_routes()
    yield
    routes_changed()
    from translation.backpressure import forget

    forget()


@pytest.fixture(scope="session")
def broker() -> redis.Redis:
    """The test Redis database, emptied so no job of an earlier run reaches the worker."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    return client


def database_url() -> str:
    """The test database as a URL, for processes the tests start (with its password, if any)."""
    from django.db import connection

    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def broker_url(database: int) -> str:
    """The test broker with another Redis database number (for tests that flush their own)."""
    return re.sub(r"/\d+$", f"/{database}", settings.CELERY_BROKER_URL)


def tasks_processed(worker_name: str = WORKER_NAME, task: str = "") -> int:
    """How many translate jobs (or ``task``s) the worker has taken so far (its own count, from
    remote control)."""
    from cs_portal.celery import app
    from translation.tasks import TRANSLATE_TASK

    stats = app.control.inspect([worker_name], timeout=2).stats() or {}
    return stats.get(worker_name, {}).get("total", {}).get(task or TRANSLATE_TASK, 0)


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

    from translation.routing import routes

    with django_db_blocker.unblock():
        initial_routes()
        # Named, not "all": a worker started with "all" would follow every queue a test routes
        # to, such as the one test_failover's own workers consume.
        queues = ",".join(sorted({route.queue for route in routes() if route.enabled} | {SPARE_QUEUE}))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(), PYTHONUNBUFFERED="1",
               DATABASE_CONN_MAX_AGE="60")
    log = Path(settings.DATA_DIR) / "test-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "workers.main", "--queues", queues, "--name", WORKER_NAME,
                f"--metrics-port={WORKER_METRICS_PORT}", f"--lanes={WORKER_LANES}",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        if not wait_until_consuming(process, WORKER_NAME, WORKER_START_TIMEOUT_S):
            raise RuntimeError(f"test worker did not start; its log:\n{log.read_text()[-3000:]}")
        yield process
    finally:
        stop_process(process, timeout=30)


@pytest.fixture
def api_client_key(db) -> tuple[object, str]:
    from cs_portal.portal.services import api_client_create

    return api_client_create(name="test-widget")


@pytest.fixture
def queued_translation(api_client_key, tiny_models, django_capture_on_commit_callbacks):
    """A Spanish customer message's queued translation into English, not sent to the broker:
    the on-commit enqueue is captured, so a test drives the worker's side by hand."""
    from cs_portal.portal.services import conversation_create, message_create_from_customer

    client, _ = api_client_key
    conversation = conversation_create(api_client=client, customer_name="Ana")
    with django_capture_on_commit_callbacks(execute=False):
        message = message_create_from_customer(conversation=conversation, text="Hola, mi pedido no llegó", language="es")
    return message.translations.get()


@pytest.fixture
def many_translations(api_client_key, tiny_models, django_capture_on_commit_callbacks):
    """Translations of five Spanish messages and one French one, all queued, none sent."""
    from cs_portal.portal.services import conversation_create, message_create_from_customer

    client, _ = api_client_key
    texts = [("es", f"Mi pedido número {i} no ha llegado.") for i in range(5)] + [("fr", "Mon colis est en retard.")]
    rows = []
    with django_capture_on_commit_callbacks(execute=False):
        for language, text in texts:
            conversation = conversation_create(api_client=client, customer_name="Ana")
            rows.append(message_create_from_customer(conversation=conversation, text=text, language=language).translations.get())
    return rows


class Http:
    """A small JSON client over real HTTP (urllib) against a running server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def call(self, method: str, path: str, body=None, *, key: str | None = None, raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict | list | None]:
        import json
        import urllib.error
        import urllib.request

        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        return status, (json.loads(payload) if payload else None)


@pytest.fixture
def http(live_server) -> Http:
    return Http(live_server.url)
