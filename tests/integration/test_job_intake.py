"""Jobs dispatch in the real batching worker: a translate message goes from the consumer straight
into the batcher (workers/job_intake.py), and any other message takes Celery's own path."""

import pytest
from django.db import transaction

from cs_portal.portal.services import conversation_create, message_create_from_customer
from tests.conftest import WORKER_NAME, route_update, tasks_processed, wait_for
from tests.integration.test_batching import unacked_jobs
from translation.models import Translation, TranslationStatus
from translation.tasks import translate

pytestmark = pytest.mark.django_db(transaction=True)


def intake() -> dict[str, int]:
    """The worker's ``inspect intake`` answer."""
    from cs_portal.celery import app

    [reply] = app.control.broadcast("intake", destination=[WORKER_NAME], reply=True, timeout=5)
    return reply[WORKER_NAME]


def settled(before: dict[str, int], **expected: int):
    """A check for ``wait_for``: the intake's counts grew by ``expected`` since ``before``, and no
    job is in flight."""

    def check():
        now = intake()
        grown = {name: now[name] - before[name] for name in expected}
        return now if grown == expected and now["in_flight"] == 0 else None

    return check


def active(name: str = WORKER_NAME) -> list[dict]:
    """The worker's ``inspect active`` answer: its translate jobs being executed."""
    from cs_portal.celery import app

    replies = app.control.inspect(destination=[name], timeout=5).active(safe=True) or {}  # as Flower asks
    return [task for task in replies.get(name, []) if task["name"] == translate.name]


def finished(rows) -> bool:
    return not Translation.objects.filter(pk__in=[row.pk for row in rows], status__in=[
        TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists()


class JobIntakeTests:
    def test_a_burst_goes_into_the_batcher_without_the_pool_and_every_message_is_acknowledged(self, worker, api_client_key):
        client, _ = api_client_key
        before, processed = intake(), tasks_processed()
        with transaction.atomic():
            conversation = conversation_create(api_client=client, customer_name="Burst")
            for i in range(40):
                message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")
        rows = list(Translation.objects.filter(message__conversation=conversation))
        wait_for(lambda: finished(rows), timeout=60, interval=0.2, what="the burst to finish")
        wait_for(settled(before, direct=40, succeeded=40, handed_to_pool=0, retried=0, failed=0), timeout=10,
                 what="the intake to count 40 direct jobs")
        assert {row.status for row in Translation.objects.filter(pk__in=[row.pk for row in rows])} == {TranslationStatus.DONE}
        assert max(Translation.objects.filter(pk__in=[row.pk for row in rows]).values_list("batch_size", flat=True)) > 1
        # Celery's own count of the task (``inspect stats``) sees them, as it sees the pool's.
        assert tasks_processed() - processed == 40
        assert active() == []  # they stood among the active requests only while in flight
        ids = {f"[{row.pk}]" for row in rows}
        wait_for(lambda: not ids & unacked_jobs(), timeout=10, what="the burst's messages to be acknowledged")

    def test_a_message_with_a_countdown_takes_celerys_path_and_its_job_is_stored_once(self, worker, api_client_key):
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Later")
        message = message_create_from_customer(conversation=conversation, text="Hola", language="es")
        row = message.translations.get()
        wait_for(lambda: finished([row]), timeout=30, what="the translation to finish")
        done = Translation.objects.get(pk=row.pk)
        before = intake()
        # The same job again, with a countdown (as an operator's retry might send it): Celery's pool
        # runs it, and the ledger keeps the first result.
        translate.apply_async(args=[row.pk], queue=row.queue, countdown=0.5)
        wait_for(settled(before, direct=0, handed_to_pool=1), timeout=20, what="the pool to take the message")
        again = Translation.objects.get(pk=row.pk)
        assert (again.status, again.text, again.finished_at, again.attempts) == (
            TranslationStatus.DONE, done.text, done.finished_at, done.attempts)
        wait_for(lambda: f"[{row.pk}]" not in unacked_jobs(), timeout=10, what="the message to be acknowledged")

    def test_a_payload_the_task_refuses_is_refused_by_celerys_path_and_acknowledged(self, worker):
        before = intake()
        translate.apply_async(args=["not-a-row-id"], queue="translate.en", argsrepr="['not-a-row-id']")
        wait_for(settled(before, direct=0, handed_to_pool=1), timeout=20, what="the pool to take the message")
        wait_for(lambda: "['not-a-row-id']" not in unacked_jobs(), timeout=10, what="the refused message to be acknowledged")

    def test_a_passing_failure_is_retried_by_a_new_message_until_the_ledger_fails_it(self, worker, api_client_key):
        route_update("*", "en", model_name="/nonexistent/checkpoint")  # every attempt fails the same way
        client, _ = api_client_key
        before = intake()
        conversation = conversation_create(api_client=client, customer_name="Jean")
        message = message_create_from_customer(conversation=conversation, text="Bonjour", language="fr")
        row = message.translations.get()
        wait_for(lambda: finished([row]), timeout=90, what="the translation to fail")
        failed = Translation.objects.get(pk=row.pk)
        assert (failed.status, failed.attempts) == (TranslationStatus.FAILED, 3)
        # The first attempt came straight into the batcher and was retried as Task.retry retries:
        # a new message with a countdown, which (as any message with an ETA) Celery's own path
        # takes; that path retried the second attempt, and ended the third.
        wait_for(settled(before, direct=1, retried=1, succeeded=0, failed=0, handed_to_pool=2), timeout=10,
                 what="the intake to count one direct retry")


SHUTDOWN_QUEUE = "translate.en.shutdown"  # a queue of this test's own


def queued_jobs(queue: str) -> set[str]:
    """The argument texts (``[<row id>]``) of the messages waiting in ``queue`` (its priority lists)."""
    import json

    import redis
    from django.conf import settings

    prefix = (settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}).get("global_keyprefix", "")
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = set()
    for key in client.keys(f"{prefix}{queue}*"):
        for entry in client.lrange(key, 0, -1):
            found.add(json.loads(entry).get("headers", {}).get("argsrepr", ""))
    return found


def drop_queue(queue: str) -> None:
    """The messages left in ``queue``, deleted: no worker of the suite consumes it."""
    import redis
    from django.conf import settings

    prefix = (settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}).get("global_keyprefix", "")
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in client.keys(f"{prefix}{queue}*"):
        client.delete(key)


def test_a_warm_shutdown_acknowledges_the_jobs_in_the_batcher_before_it_closes(tmp_path, tiny_models, api_client_key):
    """SIGTERM while a burst is in the batcher: the jobs taken end done and their messages are
    acknowledged; the others wait in the queue. None is left claimed, or both done and queued."""
    import os
    import signal
    import subprocess
    import sys

    from cs_portal.celery import app
    from tests.conftest import ROOT, database_url

    route_update("es", "en", queue=SHUTDOWN_QUEUE)
    name = "shutdown@localhost"
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(), PYTHONUNBUFFERED="1")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "workers.main", "--queues", SHUTDOWN_QUEUE, "--name", name,
                                   "--lanes", "1"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def answers():
            return app.control.broadcast("intake", destination=[name], reply=True, timeout=1)

        wait_for(answers, timeout=120, interval=0.5, what="the worker to consume")
        client, _ = api_client_key
        with transaction.atomic():
            conversation = conversation_create(api_client=client, customer_name="Stop")
            for i in range(300):
                message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")
        rows = list(Translation.objects.filter(message__conversation=conversation))

        def in_flight():
            replies = answers()
            return replies and replies[0][name]["in_flight"] > 0

        wait_for(in_flight, timeout=30, interval=0.05, what="jobs in the worker's batcher")
        # The jobs in the batcher are the worker's active tasks, as a pool task waiting for its
        # batch was (what its heartbeat counts, and Flower shows).
        listed = wait_for(lambda: active(name), timeout=10, interval=0.05, what="inspect active to list the jobs")
        ours = {f"[{row.pk}]" for row in rows}
        assert {task["args"] for task in listed} <= ours
        assert all(task["hostname"] == name and task["time_start"] > 0 and task["acknowledged"] is False
                   and task["delivery_info"]["routing_key"] == SHUTDOWN_QUEUE for task in listed), listed
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        text = log.read_text()
        assert "did not end" not in text, text[-3000:]
        now = {row.pk: row.status for row in Translation.objects.filter(pk__in=[row.pk for row in rows])}
        done = {pk for pk, status in now.items() if status == TranslationStatus.DONE}
        assert done, "the worker stopped before finishing any job"
        assert set(now.values()) <= {TranslationStatus.DONE, TranslationStatus.QUEUED}, text[-3000:]
        waiting = queued_jobs(SHUTDOWN_QUEUE)
        done_jobs = {f"[{pk}]" for pk in done}
        assert not done_jobs & waiting, (done_jobs & waiting, text[-3000:])  # done: not given back
        assert not done_jobs & unacked_jobs(), text[-3000:]  # and acknowledged
        assert {f"[{pk}]" for pk in now if pk not in done} <= waiting  # the rest wait for a worker
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        drop_queue(SHUTDOWN_QUEUE)
