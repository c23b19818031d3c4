"""Ledger dispatch on PostgreSQL and the real Redis: the bell, the wake-ups, claims by queue."""

import json
from datetime import timedelta

import pytest
import redis
from django.db import OperationalError
from django.utils import timezone

from tests.conftest import broker_url
from translation.dispatch import (
    BELL_KEY,
    bell_clear,
    bell_ring,
    queue_wake,
    translation_run_queued,
    translations_claim_queued,
)
from translation.execution import RunOutcome, TransientFailure, translation_run_batch
from translation.models import Translation, TranslationStatus
from translation.recovery import in_flight_resend, lost_jobs_resend
from translation.tasks import TAKE_QUEUED_TASK

pytestmark = pytest.mark.django_db

QUEUE = "translate.dispatch-test"  # consumed by no worker: what is sent to it stays there


@pytest.fixture
def broker():
    client = redis.Redis.from_url(broker_url(15))
    client.delete(QUEUE, BELL_KEY.format(queue=QUEUE))
    yield client
    client.delete(QUEUE, BELL_KEY.format(queue=QUEUE))


@pytest.fixture
def ledger(settings):
    settings.TRANSLATION_DISPATCH = "ledger"


@pytest.fixture
def waiting(many_translations):
    """The five Spanish jobs, queued on the test's queue, oldest first."""
    rows = [row for row in many_translations if row.source_language == "es"]
    Translation.objects.filter(pk__in=[row.pk for row in rows]).update(queue=QUEUE)
    Translation.objects.exclude(pk__in=[row.pk for row in rows]).update(status=TranslationStatus.DONE)
    return list(Translation.objects.filter(pk__in=[row.pk for row in rows]).order_by("pk"))


def wake_ups(broker) -> list[str]:
    """The wake-ups waiting in the test queue: the queue each names."""
    found = []
    for raw in broker.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == TAKE_QUEUED_TASK
        found.append(message["headers"]["argsrepr"])
    return found


class BellTests:
    def test_one_wake_up_while_the_bell_is_set_and_another_once_a_worker_cleared_it(self, broker):
        assert [queue_wake(QUEUE) for _ in range(5)] == [True] * 5
        assert wake_ups(broker) == [repr([QUEUE])]
        bell_clear(QUEUE)  # a worker looks at the queue: a job committed after that rings again
        queue_wake(QUEUE)
        assert len(wake_ups(broker)) == 2

    def test_the_bell_expires_in_case_its_worker_died_holding_it(self, broker, settings):
        settings.TRANSLATION_LOST_AFTER_S = 1
        assert bell_ring(QUEUE)
        assert 0 < broker.pttl(BELL_KEY.format(queue=QUEUE)) <= 1000

    def test_a_forced_wake_up_is_sent_even_while_the_bell_is_set(self, broker):
        queue_wake(QUEUE)
        queue_wake(QUEUE, force=True)
        assert len(wake_ups(broker)) == 2

    def test_the_installations_key_prefix_names_the_bell(self, broker):
        from cs_portal.celery import app

        saved = dict(app.conf.broker_transport_options)
        app.conf.broker_transport_options = {**saved, "global_keyprefix": "site-a:"}
        try:
            assert bell_ring(QUEUE)
            assert broker.exists("site-a:" + BELL_KEY.format(queue=QUEUE))
            assert not broker.exists(BELL_KEY.format(queue=QUEUE))
        finally:
            broker.delete("site-a:" + BELL_KEY.format(queue=QUEUE))
            app.conf.broker_transport_options = saved


class LedgerEnqueueTests:
    def test_a_burst_of_jobs_sends_one_wake_up_and_no_job_message(self, broker, ledger, waiting):
        from translation.sending import translation_enqueue

        for row in waiting:
            assert translation_enqueue(translation=row)
        assert wake_ups(broker) == [repr([QUEUE])]

    def test_a_broker_that_refuses_leaves_the_rows_queued_and_unstamped(self, ledger, waiting, monkeypatch):
        from translation import tasks
        from translation.sending import translation_enqueue

        def refused(*args, **kwargs):
            raise ConnectionError("broker down")

        monkeypatch.setattr(tasks.take_queued, "apply_async", refused)
        monkeypatch.setattr("translation.dispatch.bell_ring", lambda queue: True)
        assert translation_enqueue(translation=waiting[0]) is False
        row = Translation.objects.get(pk=waiting[0].pk)
        assert (row.status, row.enqueued_at) == (TranslationStatus.QUEUED, None)


class CommitWakeTests:
    @pytest.fixture
    def wakes(self, monkeypatch, ledger):
        """The queues woken (the wake-up itself is not sent: these jobs' queue is a worker's)."""
        import translation.dispatch as dispatch

        woken = []
        monkeypatch.setattr(dispatch, "queue_wake", lambda queue, force=False: woken.append(queue) or True)
        return woken

    def send(self, client, texts):
        from cs_portal.portal.services import conversation_create, message_create_from_customer

        conversation = conversation_create(api_client=client, customer_name="Ana")
        return [message_create_from_customer(conversation=conversation, text=text, language="es") for text in texts]

    def test_the_jobs_of_one_commit_ring_once(self, api_client_key, tiny_models, wakes,
                                              django_capture_on_commit_callbacks):
        from django.db import transaction

        client, _ = api_client_key
        with django_capture_on_commit_callbacks(execute=True):
            with transaction.atomic():
                self.send(client, [f"Mi pedido {i} no ha llegado." for i in range(5)])
        assert wakes == ["translate.en"]
        with django_capture_on_commit_callbacks(execute=True):  # the next commit rings again
            with transaction.atomic():
                self.send(client, ["Hola"])
        assert wakes == ["translate.en", "translate.en"]

    def test_a_savepoint_rolled_back_does_not_take_the_ring_with_it(self, api_client_key, tiny_models, wakes,
                                                                     django_capture_on_commit_callbacks):
        from django.db import transaction

        client, _ = api_client_key
        with django_capture_on_commit_callbacks(execute=True):
            with transaction.atomic():
                try:
                    with transaction.atomic():
                        self.send(client, ["Primero"])  # its callback (the first to ring) is dropped
                        raise RuntimeError("rolled back")
                except RuntimeError:
                    pass
                self.send(client, ["Segundo"])
        assert wakes == ["translate.en"]


class ClaimQueuedTests:
    def test_the_oldest_queued_jobs_of_the_queue_up_to_the_limit(self, waiting):
        jobs = translations_claim_queued(QUEUE, worker="w1@h", limit=3)
        assert [job.id for job in jobs] == [row.pk for row in waiting[:3]]
        assert {job.attempt for job in jobs} == {1}
        rows = Translation.objects.filter(pk__in=[job.id for job in jobs])
        assert {(row.status, row.worker, row.consumed_from) for row in rows} == {(TranslationStatus.RUNNING, "w1@h", QUEUE)}
        assert [job.id for job in translations_claim_queued(QUEUE, worker="w2@h", limit=10)] == [row.pk for row in waiting[3:]]
        assert translations_claim_queued(QUEUE, worker="w2@h", limit=10) == []

    def test_a_claimed_job_knows_how_long_it_waited_since_it_was_queued(self, waiting):
        from datetime import timedelta

        from translation.dispatch import translations_start
        from translation.execution import translation_requeue

        Translation.objects.filter(pk=waiting[0].pk).update(enqueued_at=timezone.now() - timedelta(seconds=30))
        [job] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        assert 30 <= job.waited_s < 40
        # Queued again after a passing failure, it has waited since it was first queued.
        translation_requeue(job=translations_start([job])[0], reason="CUDA error")
        Translation.objects.filter(pk=job.id).update(retry_at=timezone.now())
        [again] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        assert again.id == job.id and again.waited_s >= 30

    def test_a_claim_that_fails_halfway_claims_nothing_and_holds_nothing(self, waiting, settings, monkeypatch):
        # Two looks (the first met a row out of attempts) commit together or not at all.
        from translation import dispatch
        from translation.claims import _computing

        settings.TRANSLATION_MAX_ATTEMPTS = 1
        Translation.objects.filter(pk=waiting[0].pk).update(attempts=1)
        looks = []
        claim_rows = dispatch._claim_queued_rows

        def second_look_fails(*args, **kwargs):
            looks.append(1)
            if len(looks) == 2:
                raise OperationalError("the connection dropped")
            return claim_rows(*args, **kwargs)

        monkeypatch.setattr(dispatch, "_claim_queued_rows", second_look_fails)
        with pytest.raises(OperationalError):
            translations_claim_queued(QUEUE, worker="w1@h", limit=2, holder=-1)
        rows = Translation.objects.filter(pk__in=[row.pk for row in waiting])
        assert {row.status for row in rows} == {TranslationStatus.QUEUED}
        assert not any(row.pk in _computing for row in waiting)

    def test_other_queues_are_left_alone(self, waiting):
        assert translations_claim_queued("translate.elsewhere", worker="w1@h", limit=10) == []

    def test_a_job_queued_again_after_a_passing_failure_waits_for_its_backoff(self, waiting):
        from translation.dispatch import translations_start
        from translation.execution import translation_requeue

        [job] = translations_start(translations_claim_queued(QUEUE, worker="w1@h", limit=1))
        translation_requeue(job=job, reason="CUDA error")  # its batch failed after attempt 1: 2 s
        row = Translation.objects.get(pk=job.id)
        assert row.status == TranslationStatus.QUEUED
        assert 1.5 < (row.retry_at - timezone.now()).total_seconds() <= 2
        claimed = translations_claim_queued(QUEUE, worker="w1@h", limit=10)
        assert job.id not in [other.id for other in claimed] and len(claimed) == 4
        Translation.objects.filter(pk=job.id).update(retry_at=timezone.now())
        [again] = translations_claim_queued(QUEUE, worker="w1@h", limit=10)
        assert (again.id, again.attempt) == (job.id, 2)
        assert Translation.objects.get(pk=job.id).retry_at is None

    def test_a_job_whose_batch_never_ran_may_be_claimed_at_once(self, waiting):
        from translation.execution import translation_requeue

        [job] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        translation_requeue(job=job, reason="its engine died", retry=False)
        assert [again.id for again in translations_claim_queued(QUEUE, worker="w2@h", limit=1)] == [job.id]

    def test_a_job_out_of_attempts_is_failed_instead_of_claimed(self, waiting, settings):
        settings.TRANSLATION_MAX_ATTEMPTS = 2
        Translation.objects.filter(pk=waiting[0].pk).update(attempts=2)
        claimed = translations_claim_queued(QUEUE, worker="w1@h", limit=10)
        assert waiting[0].pk not in [job.id for job in claimed]
        row = Translation.objects.get(pk=waiting[0].pk)
        assert row.status == TranslationStatus.FAILED and row.failure_reason.startswith("Gave up after 2 attempts")


    def test_jobs_out_of_attempts_do_not_take_the_places_of_others(self, waiting, settings):
        settings.TRANSLATION_MAX_ATTEMPTS = 1
        Translation.objects.filter(pk__in=[waiting[0].pk, waiting[1].pk]).update(attempts=1)
        claimed = translations_claim_queued(QUEUE, worker="w1@h", limit=2)
        assert [job.id for job in claimed] == [waiting[2].pk, waiting[3].pk]
        assert Translation.objects.filter(pk__in=[waiting[0].pk, waiting[1].pk], status=TranslationStatus.FAILED).count() == 2


    def test_a_claim_whose_batch_never_started_gives_its_attempt_back(self, waiting):
        from translation.dispatch import translations_start
        from translation.execution import translation_requeue

        waited, computed = translations_claim_queued(QUEUE, worker="w1@h", limit=2)
        assert Translation.objects.get(pk=waited.id).started_at is None  # claimed ahead of its batch
        [computed] = translations_start([computed])
        assert Translation.objects.get(pk=computed.id).started_at == computed.claimed_at
        for job in (waited, computed):
            translation_requeue(job=job, reason="the worker stops", retry=False)
        assert Translation.objects.get(pk=waited.id).attempts == 0
        assert Translation.objects.get(pk=computed.id).attempts == 1

    def test_a_dead_workers_claims_that_never_started_give_their_attempt_back(self, waiting):
        from translation.dispatch import translations_start
        from translation.recovery import claims_release

        waited, computed = translations_claim_queued(QUEUE, worker="gone@h", limit=2)
        translations_start([computed])
        assert sorted(claims_release(worker="gone@h", reason="its heartbeat went stale")) == sorted([waited.id, computed.id])
        assert Translation.objects.get(pk=waited.id).attempts == 0
        assert Translation.objects.get(pk=computed.id).attempts == 1

    def test_a_claim_given_back_cannot_pass_for_the_next_claim_of_its_row(self, waiting):
        """Its attempt is given back, so the next claim has the same attempt: the claim count
        tells them apart, and the old claim's late outcome leaves the new claim's row alone."""
        from translation.execution import translation_fail, translation_requeue, translations_complete

        [old] = translations_claim_queued(QUEUE, worker="gone@h", limit=1)
        translation_requeue(job=old, reason="the worker stops", retry=False)
        [new] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        assert (new.id, new.attempt) == (old.id, old.attempt) and new.claim == old.claim + 1
        assert translation_fail(translation_id=old.id, reason="late error", job=old) is False
        assert translation_requeue(job=old, reason="late retry") is False
        assert translations_complete([(old, "late output")]) == set()
        row = Translation.objects.get(pk=new.id)
        assert (row.status, row.worker, row.text, row.claims) == (TranslationStatus.RUNNING, "w1@h", "", 2)
        assert translations_complete([(new, "its output")]) == {new.id}

    def test_a_superseded_claims_batch_start_leaves_the_next_claim_unstarted(self, waiting):
        from translation.dispatch import translations_start
        from translation.execution import translation_requeue

        [old] = translations_claim_queued(QUEUE, worker="gone@h", limit=1)
        translation_requeue(job=old, reason="the worker stops", retry=False)
        [new] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        translations_start([old])  # the old claim's batch starts late, on another worker
        assert Translation.objects.get(pk=new.id).started_at is None
        translation_requeue(job=new, reason="the worker stops", retry=False)
        assert Translation.objects.get(pk=new.id).attempts == 0  # its batch never started: given back
        [again] = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        [again] = translations_start([again])
        assert Translation.objects.get(pk=again.id).started_at == again.claimed_at


class RunClaimedTests:
    def test_claimed_jobs_run_without_a_second_claim(self, waiting):
        jobs = translations_claim_queued(QUEUE, worker="w1@h", limit=5)
        outcomes = translation_run_batch(jobs)
        assert outcomes == [RunOutcome.DONE] * 5
        rows = Translation.objects.filter(pk__in=[row.pk for row in waiting])
        assert {(row.status, row.attempts, row.batch_size) for row in rows} == {(TranslationStatus.DONE, 1, 5)}
        assert all(row.started_at is not None and row.started_at <= row.finished_at for row in rows)

    def test_a_batch_whose_model_does_not_load_still_counts_its_attempts(self, waiting):
        # No forward pass ran, yet the batch started: its jobs' attempts are not given back, so
        # a model that never loads fails its jobs after their attempts instead of forever.
        jobs = translations_claim_queued(QUEUE, worker="w1@h", limit=2)

        def no_model(spec):
            raise OSError("no such checkpoint")

        outcomes = translation_run_batch(jobs, engines=no_model)
        assert all(isinstance(outcome, TransientFailure) for outcome in outcomes)
        rows = Translation.objects.filter(pk__in=[job.id for job in jobs])
        assert {(row.status, row.attempts) for row in rows} == {(TranslationStatus.QUEUED, 1)}
        assert all(row.started_at is not None for row in rows)

    def test_a_wake_up_without_a_batcher_runs_the_queue_a_batch_at_a_time(self, waiting):
        ran, retry_in = translation_run_queued(queue=QUEUE, worker="w1@h", batch=2)
        assert (ran, retry_in) == (5, None)
        rows = Translation.objects.filter(pk__in=[row.pk for row in waiting])
        assert sorted(row.batch_size for row in rows) == [1, 2, 2, 2, 2]
        assert {row.status for row in rows} == {TranslationStatus.DONE}

    def test_a_passing_failure_queues_the_job_again_for_a_later_look(self, waiting, monkeypatch):
        from translation import execution

        def failing(texts, *args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access")

        jobs = translations_claim_queued(QUEUE, worker="w1@h", limit=1)
        engine = execution.engine_for(jobs[0].spec)
        monkeypatch.setattr(engine, "translate_with_usage", failing)
        [outcome] = translation_run_batch(jobs)
        assert isinstance(outcome, TransientFailure)
        row = Translation.objects.get(pk=jobs[0].id)
        assert row.status == TranslationStatus.QUEUED and row.retry_at > timezone.now()


class LedgerRecoveryTests:
    def test_old_queued_jobs_wake_their_queue_and_are_neither_counted_nor_failed(self, broker, ledger, waiting, settings):
        settings.TRANSLATION_MAX_RESENDS = 0
        past = timezone.now() - timedelta(seconds=60)
        Translation.objects.filter(pk__in=[row.pk for row in waiting]).update(created_at=past, enqueued_at=past)
        Translation.objects.filter(pk=waiting[0].pk).update(enqueued_at=None)  # its commit's wake-up failed
        result = lost_jobs_resend(older_than_s=10)
        assert result.sent == [waiting[0].pk] and result.failed == []
        assert wake_ups(broker) == [repr([QUEUE])]
        rows = Translation.objects.filter(pk__in=[row.pk for row in waiting])
        assert {(row.status, row.resends) for row in rows} == {(TranslationStatus.QUEUED, 0)}
        assert Translation.objects.get(pk=waiting[0].pk).enqueued_at is not None

    def test_a_lost_workers_queued_jobs_are_not_taken_for_its_own(self, ledger, waiting):
        since = timezone.now() - timedelta(seconds=5)
        assert in_flight_resend(holding=[waiting[0].pk], queues=[QUEUE], since=since, reason="gone") == []
        assert {row.resends for row in Translation.objects.filter(pk__in=[row.pk for row in waiting])} == {0}
