"""The sending side of the ledger against the real PostgreSQL: requests, retries, resends."""

import pytest

from cs_portal.portal.services import conversation_create, message_create_from_customer
from translation import errors
from translation.claims import translation_claim
from translation.execution import translation_fail
from translation.models import TranslationStatus
from translation.services import NOT_RETRYABLE, translation_retry

from translation.models import LanguageRoute  # noqa: E402
from translation.routing import routes_changed  # noqa: E402

pytestmark = pytest.mark.django_db


class TranslationRequestTests:
    def test_pair_without_route_is_recorded_failed_with_the_reason(self, api_client_key):
        LanguageRoute.objects.filter(target_language="en").delete()
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Jean")
        message = message_create_from_customer(conversation=conversation, text="Bonjour", language="fr")
        translation = message.translations.get()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason == errors.NO_ROUTE.format(source="fr", target="en")

    def test_a_disabled_route_with_nothing_behind_it_fails_visibly_with_the_reason(self, api_client_key):
        LanguageRoute.objects.filter(source_language="*", target_language="en").delete()
        LanguageRoute.objects.filter(source_language="es", target_language="en").update(enabled=False)
        routes_changed()
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Ana")
        translation = message_create_from_customer(conversation=conversation, text="Hola", language="es").translations.get()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason.startswith("Route es→en (#") and "is disabled and no enabled fallback" in translation.failure_reason

    def test_a_message_over_the_routes_input_limit_fails_visibly(self, api_client_key):
        LanguageRoute.objects.filter(source_language="es", target_language="en").update(max_input_chars=10)
        routes_changed()
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Ana")
        message = message_create_from_customer(conversation=conversation, text="Hola, mi pedido no llegó", language="es")
        translation = message.translations.get()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason.startswith("The message has 24 characters; route es→en")
        assert translation.failure_reason.endswith("accepts at most 10.")

    def test_message_in_the_agents_language_needs_no_translation(self, api_client_key):
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="John")
        message = message_create_from_customer(conversation=conversation, text="My order is late", language="en")
        assert not message.translations.exists()


class TranslationRetryTests:
    def test_failed_translation_goes_back_to_queued(self, translation, django_capture_on_commit_callbacks):
        translation_claim(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation_fail(translation_id=translation.pk, reason="device lost")
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            retried = translation_retry(translation=translation)
        assert retried.status == TranslationStatus.QUEUED
        assert retried.failure_reason == ""
        assert retried.attempts == 0  # a person's retry gets a full set of attempts
        assert len(callbacks) == 1  # one enqueue, sent when the transaction commits

    def test_only_failed_translations_are_retried(self, translation):
        with pytest.raises(errors.ApplicationError) as raised:
            translation_retry(translation=translation)
        assert raised.value.message == NOT_RETRYABLE.format(id=translation.pk, status="queued")


class TranslationEnqueueTests:
    def test_the_message_on_the_queue_names_the_row_and_its_hints_as_flower_shows_them(
        self, translation, broker, monkeypatch
    ):
        import json

        import celery.app.amqp

        from translation.sending import PRIORITY_NORMAL, translation_enqueue

        def not_called(*args, **kwargs):
            raise AssertionError("the send gives its argument texts; Celery's saferepr is not needed")

        monkeypatch.setattr(celery.app.amqp, "saferepr", not_called)

        for key in broker.keys(translation.queue + "*"):
            broker.delete(key)
        assert translation_enqueue(translation=translation)
        # The normal step's list: kombu names it "<queue>\x06\x16<step>" (step 0 is the bare name).
        [raw] = broker.lrange(f"{translation.queue}\x06\x16{PRIORITY_NORMAL}", 0, -1)
        message = json.loads(raw)
        headers = message["headers"]
        assert headers["task"] == "translation.translate"
        assert headers["argsrepr"] == f"[{translation.pk}]"
        hints = {"batch_key": translation.forward_pass_key, "chars": len(translation.source_text)}
        assert headers["kwargsrepr"].startswith(repr(hints)[:-1])  # then the route's batch size and wait
        assert "'max_batch': " in headers["kwargsrepr"] and "'max_wait_ms': " in headers["kwargsrepr"]
        # When it was queued, for the worker's batcher to count its wait from there.
        import base64

        assert message["properties"]["body_encoding"] == "base64"
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        translation.refresh_from_db()
        assert kwargs["queued_at"] == pytest.approx(translation.enqueued_at.timestamp(), abs=0.001)
        assert message["properties"]["priority"] == PRIORITY_NORMAL
        broker.delete(f"{translation.queue}\x06\x16{PRIORITY_NORMAL}")


class CommitSendsTests:
    def test_the_jobs_of_one_transaction_go_out_together_each_its_own_message(
        self, api_client_key, tiny_models, broker, monkeypatch, django_capture_on_commit_callbacks
    ):
        import base64
        import json

        from django.db import transaction
        from kombu.transport.redis import PublishBatch

        from translation.sending import PRIORITY_NORMAL

        round_trips = []
        flush = PublishBatch.flush

        def counted(batch):
            if batch._buffered:
                round_trips.append(batch._buffered)
            return flush(batch)

        monkeypatch.setattr(PublishBatch, "flush", counted)
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Ana")
        with django_capture_on_commit_callbacks(execute=True):
            with transaction.atomic():
                messages = [
                    message_create_from_customer(conversation=conversation, text=f"Pedido {n} perdido", language="es")
                    for n in range(5)
                ]
                with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint rolled back
                    message_create_from_customer(conversation=conversation, text="Olvídelo", language="es")
                    raise RuntimeError("rolled back")
        rows = [message.translations.get() for message in messages]
        key = f"{rows[0].queue}\x06\x16{PRIORITY_NORMAL}"
        sent = [json.loads(raw) for raw in broker.lrange(key, 0, -1)]
        broker.delete(key)
        # One message per job, the rolled-back job's among none of them, in one round trip.
        ids = sorted(json.loads(base64.b64decode(message["body"]))[0][0] for message in sent)
        assert ids == sorted(row.pk for row in rows)
        assert len({message["headers"]["id"] for message in sent}) == 5
        assert round_trips == [5]
        for row in rows:
            row.refresh_from_db()
            assert row.status == TranslationStatus.QUEUED and row.enqueued_at is not None

    def test_a_job_committed_alone_is_sent_alone(self, api_client_key, tiny_models, broker, monkeypatch,
                                                 django_capture_on_commit_callbacks):
        from kombu.transport.redis import PublishBatch

        from translation.sending import PRIORITY_NORMAL

        flushed = []
        flush = PublishBatch.flush
        monkeypatch.setattr(PublishBatch, "flush", lambda batch: (flushed.append(batch), flush(batch))[1])
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Ana")
        with django_capture_on_commit_callbacks(execute=True):
            message = message_create_from_customer(conversation=conversation, text="Pedido perdido", language="es")
        row = message.translations.get()
        key = f"{row.queue}\x06\x16{PRIORITY_NORMAL}"
        assert broker.llen(key) == 1
        assert flushed == []  # sent as kombu sends one message, no publish batch around it
        broker.delete(key)


class JobMessageTests:
    def test_a_jobs_message_is_the_one_apply_async_would_send(self, queued_translation):
        """``_send_job`` builds the task's message with Celery's own message functions, without
        ``apply_async``'s general work: the same task, arguments, queue, priority and headers."""
        from kombu import Connection

        from translation import sending
        from translation.tasks import translate

        row = queued_translation
        with Connection("memory://") as connection:
            producer = connection.Producer()
            sending._send_job(row, urgent=True, sent_at=row.created_at, producer=producer)
            sent = connection.SimpleQueue(row.queue).get(timeout=1)
            translate.apply_async(args=sent.payload[0], kwargs=sent.payload[1], queue=row.queue,
                                  priority=sending.PRIORITY_URGENT, connection=connection,
                                  argsrepr=sent.headers["argsrepr"], kwargsrepr=sent.headers["kwargsrepr"])
            reference = connection.SimpleQueue(row.queue).get(timeout=1)
        assert sent.payload == reference.payload
        assert sent.payload[0] == [row.pk] and sent.payload[1]["urgent"] is True
        assert sent.delivery_info["routing_key"] == reference.delivery_info["routing_key"] == row.queue
        assert sent.properties["priority"] == reference.properties["priority"] == sending.PRIORITY_URGENT
        differ = {"id", "root_id"}  # each message's own task id (and its root: itself)
        assert {k: v for k, v in sent.headers.items() if k not in differ} == \
            {k: v for k, v in reference.headers.items() if k not in differ}
        assert sent.headers["root_id"] == sent.headers["id"]
        # The task id again, the transport's tag; and apply_async's argsrepr and kwargsrepr, which
        # it also copies into the properties (the worker reads them from the headers, above).
        own = {"correlation_id", "delivery_tag", "argsrepr", "kwargsrepr"}
        assert {k: v for k, v in sent.properties.items() if k not in own} == \
            {k: v for k, v in reference.properties.items() if k not in own}
        assert (sent.content_type, sent.content_encoding) == (reference.content_type, reference.content_encoding)

    def test_a_job_sent_from_a_task_names_that_task_as_its_parent_as_apply_async_does(self, queued_translation):
        """A job requested while a worker runs a task (a back-translation asked for by a store in
        a worker without a batcher): its message's parent is that task, its root that task's root."""
        from celery._state import _task_stack
        from kombu import Connection

        from translation import sending
        from translation.tasks import translate

        row = queued_translation
        translate.push_request(id="parent-task", root_id="root-task", called_directly=False)
        _task_stack.push(translate)
        try:
            with Connection("memory://") as connection:
                sending._send_job(row, urgent=False, sent_at=row.created_at, producer=connection.Producer())
                sent = connection.SimpleQueue(row.queue).get(timeout=1)
                translate.apply_async(args=sent.payload[0], kwargs=sent.payload[1], queue=row.queue,
                                      connection=connection)
                reference = connection.SimpleQueue(row.queue).get(timeout=1)
        finally:
            _task_stack.pop()
            translate.pop_request()
        assert (sent.headers["parent_id"], sent.headers["root_id"]) == ("parent-task", "root-task")
        assert (reference.headers["parent_id"], reference.headers["root_id"]) == ("parent-task", "root-task")

        # A parent with no root of its own (sent outside any task) is the root.
        translate.push_request(id="first-task", root_id=None, called_directly=False)
        _task_stack.push(translate)
        try:
            with Connection("memory://") as connection:
                sending._send_job(row, urgent=False, sent_at=row.created_at, producer=connection.Producer())
                sent = connection.SimpleQueue(row.queue).get(timeout=1)
        finally:
            _task_stack.pop()
            translate.pop_request()
        assert (sent.headers["parent_id"], sent.headers["root_id"]) == ("first-task", "first-task")


class TranslationsStoredTests:
    def test_it_answers_which_ids_are_rows_now(self, api_client_key, tiny_models):
        from translation.selectors import translations_stored

        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Ana")
        kept, gone = (message_create_from_customer(conversation=conversation, text=f"Pedido {n}", language="es")
                      .translations.get() for n in range(2))
        gone_pk = gone.pk
        gone.delete()
        assert translations_stored([kept.pk, gone_pk, kept.pk + 10_000]) == {kept.pk}
        assert translations_stored([]) == set()
