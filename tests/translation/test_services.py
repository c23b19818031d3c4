"""The ledger's writes against the real PostgreSQL: idempotent completion, visible failures."""

import pytest

from cs_portal.portal.services import conversation_create, message_create_from_customer
from translation import errors
from translation.models import Translation, TranslationStatus
from translation.services import (
    NOT_RETRYABLE,
    RunOutcome,
    translation_claim,
    translation_complete,
    translation_fail,
    translation_retry,
    translation_run,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def translation(queued_translation):
    return queued_translation


class TranslationClaimTests:
    def test_claim_marks_the_row_running_for_the_worker(self, translation):
        job = translation_claim(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        assert job.text == "Hola, mi pedido no llegó"
        assert (job.source, job.target) == ("es", "en")
        assert translation.status == TranslationStatus.RUNNING
        assert (translation.worker, translation.consumed_from, translation.attempts) == ("w1", "translate.en", 1)
        assert translation.started_at is not None

    def test_a_done_row_is_not_claimed_again(self, translation):
        translation_complete(translation_id=translation.pk, text="first")
        assert translation_claim(translation_id=translation.pk, worker="w2", consumed_from="translate.en") is None

    def test_a_missing_row_is_not_claimed(self, db):
        assert translation_claim(translation_id=999_999, worker="w", consumed_from="translate.en") is None


class TranslationCompleteTests:
    def test_second_completion_never_overwrites_a_done_translation(self, translation):
        assert translation_complete(translation_id=translation.pk, text="first") is True
        assert translation_complete(translation_id=translation.pk, text="second") is False
        translation.refresh_from_db()
        assert translation.text == "first"
        assert Translation.objects.filter(message=translation.message).count() == 1

    def test_failure_after_done_is_ignored(self, translation):
        translation_complete(translation_id=translation.pk, text="first")
        assert translation_fail(translation_id=translation.pk, reason="late error") is False
        translation.refresh_from_db()
        assert translation.status == TranslationStatus.DONE


class TranslationRunTests:
    def test_run_stores_the_models_output(self, translation):
        outcome = translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        assert outcome is RunOutcome.DONE
        assert translation.status == TranslationStatus.DONE
        assert translation.text
        assert translation.finished_at >= translation.started_at

    def test_second_delivery_is_skipped_and_leaves_the_text(self, translation):
        translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        text, finished = translation.text, translation.finished_at
        assert translation_run(translation_id=translation.pk, worker="w2", consumed_from="translate.en") is RunOutcome.SKIPPED
        translation.refresh_from_db()
        assert (translation.text, translation.finished_at, translation.worker) == (text, finished, "w1")

    def test_input_the_model_cannot_take_fails_visibly(self, translation):
        translation.message.text = "palabra " * 600
        translation.message.save()
        outcome = translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        assert outcome is RunOutcome.FAILED
        assert translation.status == TranslationStatus.FAILED
        assert "the model accepts at most 512" in translation.failure_reason


class TranslationRequestTests:
    def test_pair_without_route_is_recorded_failed_with_the_reason(self, api_client_key, settings):
        settings.TRANSLATION_ROUTES = [{"source": "*", "target": "es", "model": "unused"}]
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Jean")
        message = message_create_from_customer(conversation=conversation, text="Bonjour", language="fr")
        translation = message.translations.get()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason == errors.NO_ROUTE.format(source="fr", target="en")

    def test_message_in_the_agents_language_needs_no_translation(self, api_client_key):
        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="John")
        message = message_create_from_customer(conversation=conversation, text="My order is late", language="en")
        assert not message.translations.exists()


class TranslationRetryTests:
    def test_failed_translation_goes_back_to_queued(self, translation, django_capture_on_commit_callbacks):
        translation_fail(translation_id=translation.pk, reason="device lost")
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            retried = translation_retry(translation=translation)
        assert retried.status == TranslationStatus.QUEUED
        assert retried.failure_reason == ""
        assert len(callbacks) == 1  # one enqueue, sent when the transaction commits

    def test_only_failed_translations_are_retried(self, translation):
        with pytest.raises(errors.ApplicationError) as raised:
            translation_retry(translation=translation)
        assert raised.value.message == NOT_RETRYABLE.format(id=translation.pk, status="queued")
