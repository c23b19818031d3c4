"""The batching worker under load: batches of more than one job form, and every job ends done once."""

import pytest
from django.db import transaction

from cs_portal.portal.services import conversation_create, message_create_from_customer
from tests.conftest import wait_for
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 120


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
