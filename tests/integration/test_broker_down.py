"""With the broker unreachable, a message and its translation job are still stored, queued."""

import json
import os
import subprocess
import sys

import pytest
from django.db import transaction

from cs_portal.portal.models import Message
from tests.conftest import ROOT, database_url
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPT = """
import json, django
django.setup()
from cs_portal.portal.services import api_client_create, conversation_create, message_create_from_customer
client, _ = api_client_create(name="offline-widget")
conversation = conversation_create(api_client=client, customer_name="Ana")
message = message_create_from_customer(conversation=conversation, text="Hola, ¿dónde está mi pedido?")
print(json.dumps({"message": message.pk}))
"""

# Three messages in one transaction: their jobs go to the broker in one publish batch.
SCRIPT_MANY = """
import json, django
django.setup()
from django.db import transaction
from cs_portal.portal.services import api_client_create, conversation_create, message_create_from_customer
client, _ = api_client_create(name="offline-widget-many")
conversation = conversation_create(api_client=client, customer_name="Ana")
with transaction.atomic():
    messages = [message_create_from_customer(conversation=conversation, text=f"Pedido {n} perdido", language="es")
                for n in range(3)]
print(json.dumps({"messages": [message.pk for message in messages]}))
"""


@pytest.fixture
def queued_translation_unsent(api_client_key, tiny_models):
    """A translation whose send failed: queued, never enqueued (its on-commit send is not run)."""
    from cs_portal.portal.services import conversation_create, message_create_from_customer

    client, _ = api_client_key
    conversation = conversation_create(api_client=client, customer_name="Ana")
    with transaction.atomic():
        message = message_create_from_customer(conversation=conversation, text="Mi pedido no llegó", language="es")
        transaction.get_connection().run_on_commit.clear()  # as if the broker had refused it ...
    Translation.objects.filter(message=message).update(enqueued_at=None)  # ... which clears the stamp
    return message.translations.get()


class BrokerDownTests:
    @pytest.mark.parametrize(("dispatch", "says"), [
        ("jobs", "it stays queued"),  # the job's message
        ("ledger", "its jobs stay queued"),  # the queue's wake-up (the bell, also in Redis, unread)
    ])
    def test_message_and_job_stay_in_the_ledger_and_the_call_returns(self, tiny_models, dispatch, says):
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url(),
            CELERY_BROKER_URL="redis://127.0.0.1:1/0",  # nothing listens on port 1
            TRANSLATION_DISPATCH=dispatch,
        )
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        message = Message.objects.get(pk=outcome["message"])
        translation = Translation.objects.get(message=message)
        assert translation.status == TranslationStatus.QUEUED
        assert translation.enqueued_at is None  # never reached a queue: the reconciler's to resend
        assert says in result.stderr

    def test_the_jobs_of_a_transaction_sent_together_all_stay_queued_unsent(self, tiny_models):
        env = dict(
            os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(),
            CELERY_BROKER_URL="redis://127.0.0.1:1/0", TRANSLATION_DISPATCH="jobs",
        )
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT_MANY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        rows = Translation.objects.filter(message__in=outcome["messages"])
        assert rows.count() == 3
        for row in rows:  # every one left for the resend, none half-sent and forgotten
            assert row.status == TranslationStatus.QUEUED
            assert row.enqueued_at is None
        assert "Could not send 3 translations" in result.stderr

    @pytest.mark.parametrize("dispatch", ["jobs", "ledger"])
    def test_resend_command_sends_the_unsent_rows_once_the_broker_is_back(
        self, worker, queued_translation_unsent, dispatch, settings
    ):
        from django.core.management import call_command

        from tests.conftest import wait_for

        settings.TRANSLATION_DISPATCH = dispatch  # the row's message, or its queue's wake-up

        call_command("resend_translations", "--older-than", "0")
        done = wait_for(
            lambda: Translation.objects.filter(pk=queued_translation_unsent.pk, status=TranslationStatus.DONE).first(),
            what="the resent translation to be done",
        )
        assert done.enqueued_at is not None
        assert done.attempts == 1
