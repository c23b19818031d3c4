"""The broker restarts empty (the machine's Redis keeps nothing on disk): the jobs it held are
found missing by the reconciler and sent again; every one ends done."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from celery import current_app

from cs_portal.portal.services import agent_create, api_client_create, conversation_create, message_create_from_customer
from tests.conftest import ROOT, database_url, free_port, route_update, wait_for
from translation.execution import EMPTY_OUTPUT
from translation.models import Translation, TranslationStatus
from translation.tasks import translate
from workers.lifecycle import stop_process

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "translate.en.restart"  # a queue of this test's own


def redis_server(port: int, directory) -> subprocess.Popen:
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG",
             timeout=10, what="the test's redis-server")
    return server


def waiting(port: int) -> int:
    """Messages in the queue's lists (one per priority step)."""
    import redis

    client = redis.Redis(port=port)
    return sum(client.llen(key) for key in client.keys(QUEUE + "*"))


def broker_of_its_own(tmp_path, queue: str):
    """es->en routed to ``queue``, an agent and an API client; a redis-server of the test's own:
    (the client, its port, its URL, its process)."""
    route_update("es", "en", queue=queue)
    agent_create(username="sam", password="secret-pass", working_language="en")
    client, _ = api_client_create(name=queue)
    port = free_port()
    return client, port, f"redis://127.0.0.1:{port}/0", redis_server(port, tmp_path)


def jobs_sent(client, capture, broker: str, queue: str, count: int, text: str) -> list[int]:
    """``count`` customer messages saved, their jobs sent to ``broker`` (this test's) on ``queue``;
    their translations' ids. ``capture``: pytest-django's ``django_capture_on_commit_callbacks``."""
    conversation = conversation_create(api_client=client, customer_name="Lucía")
    with capture(execute=False):  # sent below, to this test's broker
        rows = [
            message_create_from_customer(conversation=conversation, text=text.format(n=n), language="es").translations.get()
            for n in range(count)
        ]
    with current_app.connection_for_write(broker) as connection:
        for row in rows:
            translate.apply_async(args=[row.pk], queue=queue, connection=connection)
    return [row.pk for row in rows]


def worker_start(tmp_path, broker: str, queue: str, name: str, *options: str, lost_after_s: str) -> tuple[subprocess.Popen, Path]:
    """A worker on ``broker`` (this test's), and its log."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(),
               CELERY_BROKER_URL=broker, TRANSLATION_LOST_AFTER_S=lost_after_s, PYTHONUNBUFFERED="1")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "workers.main", "--queues", queue, "--name", name, *options],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return worker, log


def every_job_ended(ids: list[int], log: Path, timeout: float) -> None:
    """Wait for every job to end; each done, or failed visibly where the random weights answered
    nothing."""
    unfinished = [TranslationStatus.QUEUED, TranslationStatus.RUNNING]

    def finished() -> bool:
        return not Translation.objects.filter(pk__in=ids, status__in=unfinished).exists()

    try:
        wait_for(finished, timeout=timeout, interval=0.3, what="every job to finish")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\nthe worker's log:\n{log.read_text()[-3000:]}") from None
    for row in Translation.objects.filter(pk__in=ids):
        assert row.status == TranslationStatus.DONE or row.failure_reason == EMPTY_OUTPUT, row.failure_reason


def test_jobs_queued_before_an_empty_restart_still_end_done(tmp_path, tiny_models, django_capture_on_commit_callbacks):
    client, port, broker, server = broker_of_its_own(tmp_path, QUEUE)
    worker = None
    try:
        ids = jobs_sent(client, django_capture_on_commit_callbacks, broker, QUEUE, 20, "¿Dónde está mi pedido {n}?")
        assert waiting(port) == 20

        server.terminate()  # restarts empty: the machine's Redis keeps nothing on disk
        server.wait(10)
        server = redis_server(port, tmp_path)
        assert waiting(port) == 0

        worker, log = worker_start(tmp_path, broker, QUEUE, "restart@localhost", "--concurrency", "8", lost_after_s="1")
        every_job_ended(ids, log, timeout=120)
        for row in Translation.objects.filter(pk__in=ids):
            assert row.resends >= 1 and row.attempts == 1  # sent again once found missing, then done once
    finally:
        if worker is not None:
            stop_process(worker, timeout=30)
        server.terminate()
        server.wait(10)


RECONNECT_QUEUE = "translate.en.reconnect"  # a queue of this test's own


def test_a_worker_with_jobs_in_its_batcher_reconnects_after_a_broker_restart_and_every_job_ends(
        tmp_path, tiny_models, django_capture_on_commit_callbacks):
    """The broker restarts while the worker's batcher holds jobs taken straight from their
    messages (workers/job_intake.py), which stand among Celery's active requests: the consumer
    reconnects (Celery hands its active requests the new event dispatcher), the worker goes on,
    and the jobs the restart lost are sent again and end done."""
    client, port, broker, server = broker_of_its_own(tmp_path, RECONNECT_QUEUE)
    name = "reconnect@localhost"
    worker, log = worker_start(tmp_path, broker, RECONNECT_QUEUE, name, "--lanes", "1", lost_after_s="10")

    def the_log() -> str:
        return f"\nthe worker's log:\n{log.read_text()[-3000:]}"

    try:
        wait_for(lambda: f"{name} ready." in log.read_text(), timeout=120, interval=0.5, what="the worker to consume")
        ids = jobs_sent(client, django_capture_on_commit_callbacks, broker, RECONNECT_QUEUE, 300,
                        "Mi pedido {n} no ha llegado.")
        # The first batch stored: the worker holds the next ones (its prefetch, 272 with one lane).
        wait_for(lambda: Translation.objects.filter(pk__in=ids, status=TranslationStatus.DONE).exists(), timeout=60,
                 interval=0.05, what="the first batch")

        server.terminate()  # the worker's connection drops with jobs in its batcher
        server.wait(10)
        server = redis_server(port, tmp_path)

        try:
            wait_for(lambda: log.read_text().count("Connected to redis") >= 2 or worker.poll() is not None,
                     timeout=60, interval=0.5, what="the worker to connect again")
        except AssertionError as failure:
            raise AssertionError(f"{failure}{the_log()}") from None
        assert worker.poll() is None, the_log()

        every_job_ended(ids, log, timeout=180)
        assert worker.poll() is None and "Unrecoverable error" not in log.read_text(), the_log()
        # Its heap frozen again with the new connection (the old one's objects thawed, collected).
        assert log.read_text().count("objects kept out of the garbage collector's full collections") == 2, the_log()
    finally:
        stop_process(worker, timeout=30)
        server.terminate()
        server.wait(10)
