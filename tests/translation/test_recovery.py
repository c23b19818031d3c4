"""The ledger as the source of truth: claims handed over, lost jobs sent again, on PostgreSQL and
the real Redis broker."""

from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from tests.conftest import broker_url
from translation.claims import Delivery, translations_claim
from translation.execution import RunOutcome, translation_run_batch
from translation.models import Translation, TranslationStatus
from translation.recovery import HANDED_OVER, claims_release, dead_workers_handle
from workers.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db


def heartbeat(name: str, *, seconds_ago: float) -> WorkerHeartbeat:
    at = timezone.now() - timedelta(seconds=seconds_ago)
    return WorkerHeartbeat.objects.create(name=name, hostname="h", pid=1, device="cpu", queues=["translate.en"],
                                          started_at=at, beat_at=at, ready=True)


def claimed_by(rows, worker: str) -> None:
    translations_claim([Delivery(row.pk, worker, "translate.en") for row in rows])


class ClaimsReleaseTests:
    def test_a_dead_workers_jobs_go_back_to_the_queue_and_are_sent_again(
        self, many_translations, sent, django_capture_on_commit_callbacks
    ):
        claimed_by(many_translations[:3], "gpu0@h")
        claimed_by(many_translations[3:4], "gpu1@h")
        with django_capture_on_commit_callbacks(execute=True):
            released = claims_release(worker="gpu0@h", reason="its process exited with status -9")
        assert sorted(released) == sorted(row.pk for row in many_translations[:3])
        assert sorted(sent) == sorted(released) and all(sent.urgent)  # ahead of the waiting jobs
        for row in Translation.objects.filter(pk__in=released):
            assert row.status == TranslationStatus.QUEUED and row.resends == 1 and row.attempts == 1
            assert row.failure_reason == HANDED_OVER.format(worker="gpu0@h", why="its process exited with status -9")
        assert Translation.objects.get(pk=many_translations[3].pk).status == TranslationStatus.RUNNING

    def test_only_workers_whose_heartbeat_went_stale_lose_their_claims(self, many_translations, settings):
        settings.WORKER_HEARTBEAT_STALE_S = 1
        heartbeat("alive@h", seconds_ago=0.2)
        heartbeat("dead@h", seconds_ago=3)
        claimed_by(many_translations[:2], "alive@h")
        claimed_by(many_translations[2:4], "dead@h")
        claimed_by(many_translations[4:6], "never-beat@h")
        handled = dead_workers_handle()
        assert set(handled) == {"dead@h", "never-beat@h"}
        assert sorted(handled["dead@h"][0]) == sorted(row.pk for row in many_translations[2:4])
        assert sorted(handled["never-beat@h"][0]) == sorted(row.pk for row in many_translations[4:6])
        assert Translation.objects.filter(status=TranslationStatus.RUNNING, worker="alive@h").count() == 2
        dead = WorkerHeartbeat.objects.get(name="dead@h")
        assert dead.stopped_at is not None and dead.last_error.startswith("Presumed dead")
        assert dead_workers_handle() == {}  # handled once, not at every turn

    def test_the_cheap_look_hands_over_stale_workers_and_leaves_those_that_never_beat_for_the_full_one(
        self, many_translations, settings
    ):
        settings.WORKER_HEARTBEAT_STALE_S = 1
        heartbeat("dead@h", seconds_ago=3)
        claimed_by(many_translations[:2], "dead@h")
        claimed_by(many_translations[2:4], "never-beat@h")
        assert set(dead_workers_handle(orphans=False)) == {"dead@h"}
        assert Translation.objects.filter(status=TranslationStatus.RUNNING, worker="never-beat@h").count() == 2
        assert set(dead_workers_handle()) == {"never-beat@h"}
        assert not Translation.objects.filter(status=TranslationStatus.RUNNING).exists()

    def test_a_worker_writing_its_row_again_keeps_its_claims_and_a_restarted_one_gives_them_up(self, many_translations):
        from workers.heartbeat import Heartbeat

        claimed_by(many_translations[:2], "w@h")
        heartbeat = Heartbeat("w@h", device="cpu", queues=["translate.en"])
        heartbeat.register()  # the row had been removed (a cleanup): written again by the same process
        assert Translation.objects.filter(status=TranslationStatus.RUNNING, worker="w@h").count() == 2
        heartbeat.register(starting=True)  # a new process of that name holds nothing yet
        assert not Translation.objects.filter(status=TranslationStatus.RUNNING, worker="w@h").exists()

    def test_a_worker_never_hands_over_its_own_claims(self, many_translations):
        claimed_by(many_translations[:2], "me@h")  # no heartbeat row: as dead as can be
        assert dead_workers_handle(exclude="me@h") == {}


@pytest.mark.usefixtures("empty_broker")  # conftest: the test broker emptied before and after
class InFlightTests:
    def test_jobs_taken_but_unclaimed_are_sent_again_and_waiting_ones_are_not(self, many_translations, sent,
                                                                              django_capture_on_commit_callbacks):
        from translation.recovery import in_flight_resend
        from translation.sending import translation_enqueue

        spanish = [row for row in many_translations if row.source_language == "es"]
        waiting, taken, elsewhere, late = spanish[0], spanish[1], spanish[2], spanish[3]
        translation_enqueue(translation=waiting)  # still in the queue
        Translation.objects.exclude(pk__in=[waiting.pk, taken.pk, elsewhere.pk, late.pk]).update(status=TranslationStatus.DONE)
        last_beat = timezone.now()
        Translation.objects.filter(pk__in=[taken.pk, elsewhere.pk]).update(enqueued_at=last_beat - timedelta(seconds=5))
        Translation.objects.filter(pk=late.pk).update(enqueued_at=last_beat + timedelta(seconds=0.1))
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True):
            # The lost worker's last beat listed `taken` (and `waiting`, still in the queue);
            # `elsewhere` is held by another worker; `late` was sent after that beat.
            resent = in_flight_resend(holding=[taken.pk, waiting.pk], queues=["translate.en"], since=last_beat,
                                      reason="its process exited")
        # What it held, and what it may have taken after its last beat, sent again at the priority
        # a worker takes first (Redis: the queue's own list; the others wait in "<queue>\x06\x166").
        assert sorted(resent) == sorted([taken.pk, late.pk]) and sorted(sent) == sorted(resent)
        broker = redis.Redis.from_url(broker_url(15))
        assert broker.llen("translate.en") == 2 and broker.llen("translate.en\x06\x166") == 1


class ClaimRuleTests:
    def test_a_job_a_live_worker_holds_is_left_to_it_and_a_dead_ones_is_taken_over(self, many_translations, settings):
        settings.WORKER_HEARTBEAT_STALE_S = 1
        heartbeat("busy@h", seconds_ago=0.1)
        first, second = many_translations[:2]
        claimed_by([first], "busy@h")
        claimed_by([second], "gone@h")  # never beat: its claim has no lease
        jobs = translations_claim([Delivery(first.pk, "standby@h", "translate.en"), Delivery(second.pk, "standby@h", "translate.en")])
        assert set(jobs) == {second.pk}
        assert Translation.objects.get(pk=first.pk).worker == "busy@h"
        assert Translation.objects.get(pk=second.pk).attempts == 2

    def test_a_workers_own_running_row_comes_back_to_it_after_a_failed_batch(self, many_translations, settings):
        """The batch that claimed it failed (a database blip) and the job was sent again: the
        same live worker claims it again instead of skipping it for ever."""
        settings.WORKER_HEARTBEAT_STALE_S = 1
        heartbeat("busy@h", seconds_ago=0.1)
        row = many_translations[0]
        claimed_by([row], "busy@h")
        assert set(translations_claim([Delivery(row.pk, "busy@h", "translate.en")])) == {row.pk}
        assert Translation.objects.get(pk=row.pk).attempts == 2

    def test_the_slow_first_worker_stores_nothing_once_its_claim_was_taken_over(self, many_translations):
        """A claim expired while its worker was only slow: one done result, the later claim's."""
        row = many_translations[0]
        [slow] = translations_claim([Delivery(row.pk, "slow@h", "translate.en")]).values()
        assert translation_run_batch([Delivery(row.pk, "standby@h", "translate.en")]) == [RunOutcome.DONE]
        from translation.execution import translations_complete

        assert translations_complete([(slow, "late output")]) == set()
        stored = Translation.objects.get(pk=row.pk)
        assert stored.worker == "standby@h" and stored.text != "late output"


class OverdueClaimTests:
    def test_a_claim_older_than_any_batch_is_handed_over_though_its_worker_lives(
        self, many_translations, sent, settings, django_capture_on_commit_callbacks
    ):
        from translation.recovery import OVERDUE, overdue_claims_handle

        overdue_s = settings.TRANSLATION_CLAIM_OVERDUE_S

        settings.WORKER_HEARTBEAT_STALE_S = 1
        heartbeat("alive@h", seconds_ago=0.1)
        stuck, recent = many_translations[:2]
        claimed_by([stuck, recent], "alive@h")
        Translation.objects.filter(pk=stuck.pk).update(
            updated_at=timezone.now() - timedelta(seconds=overdue_s + 1))
        assert dead_workers_handle() == {}  # its worker beats: the usual look leaves it alone
        with django_capture_on_commit_callbacks(execute=True):
            assert overdue_claims_handle() == [stuck.pk]
        row = Translation.objects.get(pk=stuck.pk)
        assert row.status == TranslationStatus.QUEUED and row.resends == 1 and list(sent) == [stuck.pk]
        assert row.attempts == 1  # its batch had started: the attempt counts
        assert row.failure_reason == OVERDUE.format(worker="alive@h", seconds=overdue_s)
        assert Translation.objects.get(pk=recent.pk).status == TranslationStatus.RUNNING
        assert overdue_claims_handle() == []


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_store_fails_gives_its_claims_back(settings):
    """The database goes away while the model computes and stays away past the store's retries:
    the batch fails, and its rows go back to queued (once the database answers again) instead
    of staying running under a live worker, which every other worker would skip."""
    import psycopg
    from django.db import OperationalError, connection

    from tests.conftest import database_url
    from tests.stand_ins import StandInEngine

    import time

    settings.TRANSLATION_STORE_RETRY_S = 0
    heartbeat("w1@h", seconds_ago=-3600)  # alive through the test: no reconciler (the session worker's) takes its claims
    # Committed (the database connection is cut below), with ids far beyond the sequence's: a
    # message for a row of that id left in the test broker would let the session's worker claim it.
    base = 10**12 + time.time_ns() % 10**9
    rows = Translation.objects.bulk_create([
        Translation(pk=base + i, input_text=f"Mi pedido {i} no ha llegado.", source_language="es", target_language="en",
                    queue="translate.en.unconsumed", engine="hf-seq2seq", model_name="x")
        for i in range(3)
    ])

    class DatabaseLostMeanwhile(StandInEngine):
        def translate(self, texts, source, target, glossary=None):
            with psycopg.connect(database_url().replace("postgres://", "postgresql://", 1), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
            return [f"out {text}" for text in texts]

    with pytest.raises(OperationalError):
        translation_run_batch([Delivery(row.pk, "w1@h", "translate.en") for row in rows],
                              engines=lambda spec: DatabaseLostMeanwhile())
    for row in Translation.objects.filter(pk__in=[row.pk for row in rows]):
        assert row.status == TranslationStatus.QUEUED and row.attempts == 1, row
        assert "Its batch failed before its result was stored: OperationalError" in row.failure_reason


@pytest.mark.django_db(transaction=True)
def test_a_drafts_back_translation_is_requested_though_the_database_fails_right_after_the_store(
    api_client_key, tiny_models, monkeypatch, django_capture_on_commit_callbacks
):
    """The store of a draft reply's translation succeeds, then the database fails before its
    back-translation is requested, and the store is retried: the agent still gets the
    back-translation (the store and the request commit together, or not at all)."""
    from functools import partial

    from django.db import OperationalError

    import translation.services as services
    from cs_portal.portal.services import agent_create, conversation_create, reply_draft_create
    from translation.execution import _while_database_returns, translations_complete

    from django.db import transaction

    client, _ = api_client_key
    agent = agent_create(username="sam", password="secret-pass", working_language="en")
    heartbeat("w1@h", seconds_ago=-3600)  # alive through the test: no reconciler (the session worker's) takes its claim
    # Saved and claimed in one transaction: no other worker (the session's, given a message of
    # an earlier test for this id) sees the row before this claim holds it.
    with transaction.atomic(), django_capture_on_commit_callbacks(execute=False):
        conversation = conversation_create(api_client=client, customer_name="Lucía", language="es")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Your parcel leaves today.")
        outgoing = draft.translations.get()
        [job] = translations_claim([Delivery(outgoing.pk, "w1@h", "translate.es")]).values()
    real, calls = services.back_translations_request, []

    def lost_once(ids):
        calls.append(ids)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(ids)

    monkeypatch.setattr(services, "back_translations_request", lost_once)
    with django_capture_on_commit_callbacks(execute=False):
        stored = _while_database_returns(partial(translations_complete, [(job, "Su paquete sale hoy.")]))
    assert stored == {outgoing.pk} and len(calls) == 2
    outgoing.refresh_from_db()
    assert outgoing.status == TranslationStatus.DONE
    back = outgoing.back_translations.get()
    assert (back.source_language, back.target_language, back.input_text) == ("es", "en", "Su paquete sale hoy.")


def test_a_back_translation_that_cannot_be_requested_leaves_the_draft_stored(
    api_client_key, tiny_models, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    """An error other than the database's while requesting a draft's back-translation: the
    draft's translation stays stored (the agent can correct and send it), the error logged."""
    import translation.services as services
    from cs_portal.portal.services import agent_create, conversation_create, reply_draft_create
    from translation.execution import translations_complete

    client, _ = api_client_key
    agent = agent_create(username="sam", password="secret-pass", working_language="en")
    with django_capture_on_commit_callbacks(execute=False):
        conversation = conversation_create(api_client=client, customer_name="Lucía", language="es")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Your parcel leaves today.")
    outgoing = draft.translations.get()
    [job] = translations_claim([Delivery(outgoing.pk, "w1@h", "translate.es")]).values()

    def broken(ids):
        raise ValueError("no route back")

    monkeypatch.setattr(services, "back_translations_request", broken)
    assert translations_complete([(job, "Su paquete sale hoy.")]) == {outgoing.pk}
    outgoing.refresh_from_db()
    assert outgoing.status == TranslationStatus.DONE and not outgoing.back_translations.exists()
    assert "Could not request the back-translations of drafts" in caplog.text
