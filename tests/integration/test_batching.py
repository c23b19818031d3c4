"""The batching worker under load: batches of more than one job form, and every job ends done once."""

import pytest
from django.db import transaction

from cs_portal.portal.services import conversation_create, message_create_from_customer
from tests.conftest import WORKER_LANES, WORKER_METRICS_PORT, WORKER_NAME, route_update, tasks_processed, wait_for
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 120


def unacked_jobs() -> set[str]:
    """The argument texts (``[<row id>]``) of the translate messages in the broker's unacked index."""
    import json

    import redis
    from django.conf import settings

    prefix = (settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}).get("global_keyprefix", "")
    found = set()
    for entry in redis.Redis.from_url(settings.CELERY_BROKER_URL).hvals(prefix + "unacked"):
        raw, _, _ = json.loads(entry)
        found.add(raw.get("headers", {}).get("argsrepr", ""))
    return found


class BatchingUnderLoadTests:
    def test_a_burst_is_served_in_batches_and_each_job_is_done_exactly_once(self, worker, api_client_key):
        client, _ = api_client_key
        with transaction.atomic():  # all jobs are sent together, on commit: a burst
            conversation = conversation_create(api_client=client, customer_name="Burst")
            for i in range(JOBS):
                message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")

        def all_finished():
            return Translation.objects.filter(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).count() == 0

        wait_for(all_finished, timeout=120, interval=0.2, what=f"{JOBS} translations to finish")
        rows = list(Translation.objects.filter(message__conversation=conversation))
        assert len(rows) == JOBS
        assert {row.status for row in rows} == {TranslationStatus.DONE}
        assert {row.attempts for row in rows} == {1}
        sizes = [row.batch_size for row in rows]
        assert max(sizes) > 1, sizes
        assert max(sizes) <= 128
        # Every message acknowledged: none left in the broker's unacked index to be redelivered.
        ids = {f"[{row.pk}]" for row in rows}
        wait_for(lambda: not ids & unacked_jobs(), timeout=10, what="the burst's messages to be acknowledged")

    def test_full_batches_go_to_every_lane(self, worker, api_client_key):
        from tests.workers.test_metrics import scrape, value

        def lane_batches() -> list[float]:
            samples = scrape(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")
            return [value(samples, "translation_worker_lane_batches_total", worker=WORKER_NAME, lane=str(lane))
                    for lane in range(WORKER_LANES)]

        before = lane_batches()
        route_update("es", "en", max_batch_size=4)  # 120 jobs: 30 full batches, none held back
        client, _ = api_client_key
        with transaction.atomic():
            conversation = conversation_create(api_client=client, customer_name="Lanes")
            for i in range(JOBS):
                message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")
        wait_for(lambda: not Translation.objects.filter(
            message__conversation=conversation, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
            timeout=120, interval=0.2, what=f"{JOBS} translations to finish")
        rows = list(Translation.objects.filter(message__conversation=conversation))
        assert {(row.status, row.attempts) for row in rows} == {(TranslationStatus.DONE, 1)}
        assert max(row.batch_size for row in rows) <= 4
        after = lane_batches()
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # every lane computed
        assert sum(after) - sum(before) >= JOBS / 4

    def test_ledger_dispatch_serves_a_burst_from_a_few_wake_ups(self, worker, api_client_key, settings):
        from tests.workers.test_ledger_events import Listening
        from translation.tasks import TAKE_QUEUED_TASK, TRANSLATE_TASK

        settings.TRANSLATION_DISPATCH = "ledger"  # this process, the portal, rings; the worker takes both kinds
        jobs_before, wakes_before = tasks_processed(), tasks_processed(task=TAKE_QUEUED_TASK)
        client, _ = api_client_key
        with Listening() as flower:  # what Flower hears of the worker
            with transaction.atomic():
                conversation = conversation_create(api_client=client, customer_name="Ledger")
                for i in range(JOBS):
                    message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")
            rows = Translation.objects.filter(message__conversation=conversation)
            wait_for(lambda: not rows.filter(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
                     timeout=120, interval=0.2, what=f"{JOBS} translations to finish")
            # Flower lists each job as a translate task of the worker, as in jobs dispatch.
            wait_for(lambda: len([task for task in flower.tasks_of(rows).values() if task.state == "SUCCESS"]) == JOBS,
                     timeout=10, what="a task event of each job")
        assert {(task.name, task.hostname, task.result) for task in flower.tasks_of(rows).values()} == {
            (TRANSLATE_TASK, WORKER_NAME, "'done'")}
        assert {(row.status, row.attempts, row.worker) for row in rows} == {(TranslationStatus.DONE, 1, WORKER_NAME)}
        assert max(row.batch_size for row in rows) > 1
        wakes = tasks_processed(task=TAKE_QUEUED_TASK) - wakes_before
        assert 1 <= wakes <= JOBS // 10, wakes  # a wake-up per look, not per job
        assert tasks_processed() == jobs_before  # no message per job
