"""The worker side of the ledger against the real PostgreSQL: claims, idempotent stores, failures."""

from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from translation.claims import Delivery, translation_claim, translations_claim
from translation.execution import (
    RunOutcome,
    TransientFailure,
    translation_complete,
    translation_fail,
    translation_run,
    translation_run_batch,
)
from translation.models import Translation, TranslationStatus
from tests.stand_ins import StandInEngine

pytestmark = pytest.mark.django_db


@pytest.fixture
def translation(queued_translation):
    return queued_translation


def claim(translation, worker="w1"):
    return translation_claim(translation_id=translation.pk, worker=worker, consumed_from="translate.en")


class TranslationClaimTests:
    def test_claim_marks_the_row_running_for_the_worker(self, translation):
        job = claim(translation)
        translation.refresh_from_db()
        assert job.text == "Hola, mi pedido no llegó"
        assert (job.source, job.target, job.attempt) == ("es", "en", 1)
        assert translation.status == TranslationStatus.RUNNING
        assert (translation.worker, translation.consumed_from, translation.attempts) == ("w1", "translate.en", 1)
        assert translation.started_at is not None

    def test_a_done_row_is_not_claimed_again(self, translation):
        translation_complete(job=claim(translation), text="first")
        assert claim(translation, "w2") is None

    def test_a_failed_row_is_not_claimed(self, translation):
        translation_fail(translation_id=translation.pk, reason="bad input")
        assert claim(translation) is None

    def test_a_running_row_is_claimed_again_as_a_new_attempt(self, translation):
        first = claim(translation, "w1")
        second = claim(translation, "w2")  # redelivered while w1 still holds it, or after w1 died
        assert (first.attempt, second.attempt) == (1, 2)
        translation.refresh_from_db()
        assert translation.worker == "w2"

    def test_a_row_out_of_attempts_is_failed_instead_of_claimed(self, translation, settings):
        settings.TRANSLATION_MAX_ATTEMPTS = 2
        claim(translation), claim(translation)  # two deliveries that never finished
        assert claim(translation) is None
        translation.refresh_from_db()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason.startswith("Gave up after 2 attempts.")


    def test_a_batchs_claim_takes_the_same_statements_for_one_row_as_for_six(self, many_translations):
        # It reads only what the jobs need (translation.claims.CLAIM_FIELDS): a field left out
        # and read after would cost a query per row.
        one, rest = many_translations[:1], many_translations[1:]
        with CaptureQueriesContext(connection) as first:
            [job] = translations_claim(deliveries(one)).values()
        with CaptureQueriesContext(connection) as second:
            jobs = translations_claim(deliveries(rest))
        assert len(jobs) == 5 and len(second) == len(first)
        assert job.text == one[0].message.text and job.queued_at == one[0].enqueued_at
        assert {job.source for job in jobs.values()} == {"es", "fr"}

    def test_a_batchs_queued_rows_are_claimed_by_one_statement(self, many_translations):
        with CaptureQueriesContext(connection) as queries:
            jobs = translations_claim(deliveries(many_translations, "w9@h"))
        statements = [query["sql"] for query in queries if "SAVEPOINT" not in query["sql"]]
        assert len(statements) == 1 and statements[0].startswith("WITH picked")
        assert list(jobs) == sorted(row.pk for row in many_translations)
        for row in Translation.objects.filter(pk__in=jobs):
            job = jobs[row.pk]
            assert (row.status, row.worker, row.consumed_from, row.attempts) == (
                TranslationStatus.RUNNING, "w9@h", "translate.en", 1)
            assert row.started_at == row.updated_at == job.claimed_at and row.retry_at is None
            assert (job.attempt, job.text, job.queued_at) == (1, row.message.text, row.enqueued_at or row.created_at)

    def test_a_batch_from_two_queues_claims_each_row_for_the_queue_it_came_from(self, many_translations):
        first, second = many_translations[:3], many_translations[3:]
        batch = [Delivery(row.pk, "w9@h", "translate.en") for row in first] + [
            Delivery(row.pk, "w9@h", "translate.en.other") for row in second]
        with CaptureQueriesContext(connection) as queries:
            jobs = translations_claim(batch)
        assert len([query for query in queries if query["sql"].startswith("WITH picked")]) == 2  # one per queue
        assert set(jobs) == {row.pk for row in many_translations}
        taken = dict(Translation.objects.filter(pk__in=jobs).values_list("pk", "consumed_from"))
        assert taken == {**{row.pk: "translate.en" for row in first}, **{row.pk: "translate.en.other" for row in second}}

    def test_a_mixed_batch_claims_each_row_by_its_rule_and_counts_it(self, many_translations, settings):
        from django.utils import timezone
        from prometheus_client import REGISTRY

        from tests.translation.test_recovery import claimed_by, heartbeat
        from translation import metrics
        from translation.claims import _computing, _computing_release

        settings.TRANSLATION_MAX_ATTEMPTS, settings.WORKER_HEARTBEAT_STALE_S = 3, 1
        queued, spent, busy, gone, done, fresh = many_translations
        Translation.objects.filter(pk__in=[row.pk for row in many_translations]).update(enqueued_at=timezone.now())
        heartbeat("busy@h", seconds_ago=0.1)
        claimed_by([busy], "busy@h")
        claimed_by([gone], "gone@h")  # never beat: taken over
        translation_complete(job=claim(done, "w2"), text="stored")
        Translation.objects.filter(pk=spent.pk).update(attempts=3)
        taken = (queued, gone, fresh)

        def labels(row):
            return metrics.job_labels(route_id=row.route_id, source=row.source_language, target=row.target_language,
                                      model=row.model_name)

        def counts():  # per label set of the rows taken: jobs received, queue waits observed
            return {
                tuple(labels(row).values()): (
                    REGISTRY.get_sample_value("translation_jobs_received_total", labels(row)) or 0,
                    REGISTRY.get_sample_value("translation_queue_wait_seconds_count", labels(row)) or 0,
                )
                for row in taken
            }

        before = counts()
        jobs = translations_claim(deliveries(many_translations, "w9@h"), computing=True)
        try:
            assert set(jobs) == {row.pk for row in taken}
            assert all(pk in _computing for pk in jobs)  # listed as this thread's until released
        finally:
            _computing_release(jobs)
        rows = {row.pk: row for row in Translation.objects.filter(pk__in=[row.pk for row in many_translations])}
        assert (rows[gone.pk].worker, rows[gone.pk].attempts) == ("w9@h", 2)
        assert (rows[busy.pk].worker, rows[busy.pk].attempts) == ("busy@h", 1)
        assert (rows[done.pk].status, rows[done.pk].text) == (TranslationStatus.DONE, "stored")
        assert rows[spent.pk].status == TranslationStatus.FAILED
        assert rows[spent.pk].failure_reason.startswith("Gave up after 3 attempts.")
        after = counts()
        for key, (received, waits) in before.items():
            claimed_here = sum(1 for row in taken if tuple(labels(row).values()) == key)
            assert after[key] == (received + claimed_here, waits + claimed_here)

    def test_a_claim_that_fails_halfway_claims_nothing_and_lists_nothing(self, many_translations, monkeypatch):
        from django.db import OperationalError

        from tests.translation.test_recovery import claimed_by
        from translation import claims

        claimed_by(many_translations[:1], "gone@h")  # a running row: the second, ORM part of the claim

        def drops(*args, **kwargs):
            raise OperationalError("the connection dropped")

        monkeypatch.setattr(claims, "_claim_others", drops)
        with pytest.raises(OperationalError):
            translations_claim(deliveries(many_translations), computing=True)
        rows = Translation.objects.filter(pk__in=[row.pk for row in many_translations[1:]])
        assert {row.status for row in rows} == {TranslationStatus.QUEUED}
        assert not any(row.pk in claims._computing for row in many_translations)

    def test_a_claim_of_running_and_spent_rows_reads_no_row_again(self, many_translations, settings):
        rows = many_translations
        settings.TRANSLATION_MAX_ATTEMPTS = 3
        held, spent = [rows[0], rows[2], rows[3]], [rows[1], rows[4], rows[5]]
        Translation.objects.filter(pk__in=[row.pk for row in held]).update(
            status=TranslationStatus.RUNNING, worker="gone@h", attempts=1)  # a lost worker's claims
        Translation.objects.filter(pk__in=[row.pk for row in spent]).update(attempts=3, failure_reason="killed its worker")
        with CaptureQueriesContext(connection) as first:
            jobs = translations_claim(deliveries([held[0], spent[0]]))
        assert set(jobs) == {held[0].pk}
        with CaptureQueriesContext(connection) as second:
            jobs = translations_claim(deliveries(held[1:] + spent[1:]))
        assert set(jobs) == {row.pk for row in held[1:]}
        assert len(second) == len(first)  # the queued rows' statement fails every spent row; no other read
        failed = Translation.objects.get(pk=spent[1].pk)
        assert failed.status == TranslationStatus.FAILED and "killed its worker" in failed.failure_reason


class TranslationCompleteTests:
    def test_second_completion_never_overwrites_a_done_translation(self, translation):
        job = claim(translation)
        assert translation_complete(job=job, text="first") is True
        assert translation_complete(job=job, text="second") is False
        translation.refresh_from_db()
        assert translation.text == "first"
        assert Translation.objects.filter(message=translation.message).count() == 1

    def test_a_superseded_claim_stores_nothing_and_the_latest_claim_stores_once(self, translation):
        stale, latest = claim(translation, "w1"), claim(translation, "w2")
        assert translation_complete(job=stale, text="from w1") is False
        assert translation_complete(job=latest, text="from w2") is True
        translation.refresh_from_db()
        assert (translation.text, translation.worker, translation.status) == ("from w2", "w2", TranslationStatus.DONE)

    def test_a_batchs_stored_jobs_are_counted_per_label_set(self, many_translations):
        from prometheus_client import REGISTRY

        from translation.execution import translations_complete

        jobs = translations_claim(deliveries(many_translations))

        def counts():
            found = {}
            for job in jobs.values():
                labels = job.labels
                found[tuple(labels.values())] = tuple(
                    REGISTRY.get_sample_value(name, labels) or 0 for name in (
                        "translation_jobs_done_total", "translation_compute_seconds_count",
                        "translation_end_to_end_seconds_count"))
            return found

        before = counts()
        assert translations_complete([(job, "done") for job in jobs.values()]) == set(jobs)
        after = counts()
        for key, values in before.items():
            stored = sum(1 for job in jobs.values() if tuple(job.labels.values()) == key)
            assert after[key] == tuple(value + stored for value in values)
        assert sorted(sum(1 for job in jobs.values() if tuple(job.labels.values()) == key) for key in before) == [1, 5]

    def test_a_batch_stores_the_rows_whose_claims_hold_and_says_which(self, many_translations):
        from translation.execution import translations_complete

        jobs = translations_claim(deliveries(many_translations))
        superseded = many_translations[2].pk
        claim(many_translations[2], "w2")  # redelivered to another worker meanwhile
        # Nothing in a text is SQL, nor an array literal's syntax (PostgreSQL gets them as an array).
        odd = ["", "NULL", "{a,b}", "back\\slash, \"comma\"", "line\nbreak\ttab", "注文 🚚 {}"]
        texts = {pk: f"it's 100% {pk}; \"quoted\" -- $1 %s {odd[i % len(odd)]}" for i, pk in enumerate(jobs)}
        texts[next(iter(jobs))] = "NULL"
        stored = translations_complete([(job, texts[pk]) for pk, job in jobs.items()], batch_size=6)
        assert stored == set(jobs) - {superseded}
        for row in Translation.objects.filter(pk__in=jobs):
            if row.pk == superseded:
                assert (row.status, row.text, row.worker) == (TranslationStatus.RUNNING, "", "w2")
            else:
                assert (row.status, row.text, row.batch_size) == (TranslationStatus.DONE, texts[row.pk], 6)

    def test_failure_after_done_is_ignored(self, translation):
        job = claim(translation)
        translation_complete(job=job, text="first")
        assert translation_fail(translation_id=translation.pk, reason="late error") is False
        assert translation_fail(translation_id=translation.pk, reason="late error", job=job) is False
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

    def test_a_passing_error_queues_the_row_again_then_fails_it_after_the_last_attempt(self, translation, settings):
        settings.TRANSLATION_MAX_ATTEMPTS = 2
        Translation.objects.filter(pk=translation.pk).update(model_name="/nonexistent/model")
        with pytest.raises(TransientFailure):
            translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        assert (translation.status, translation.attempts) == (TranslationStatus.QUEUED, 1)
        assert translation.failure_reason.startswith("Attempt 1 failed, retrying.")
        assert translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en") is RunOutcome.FAILED
        translation.refresh_from_db()
        assert translation.status == TranslationStatus.FAILED
        assert translation.failure_reason.startswith("Gave up after 2 attempts.")
        assert "/nonexistent/model" in translation.failure_reason

    def test_input_the_model_cannot_take_fails_visibly(self, translation):
        translation.message.text = "palabra " * 600
        translation.message.save()
        outcome = translation_run(translation_id=translation.pk, worker="w1", consumed_from="translate.en")
        translation.refresh_from_db()
        assert outcome is RunOutcome.FAILED
        assert translation.status == TranslationStatus.FAILED
        assert "the model accepts at most 512" in translation.failure_reason




def deliveries(rows, worker="w1"):
    return [Delivery(row.pk, worker, "translate.en") for row in rows]


class TranslationRunBatchTests:
    def test_a_batch_ends_done_with_one_outcome_per_delivery_in_order(self, many_translations):
        outcomes = translation_run_batch(deliveries(many_translations))
        assert outcomes == [RunOutcome.DONE] * 6
        rows = Translation.objects.filter(pk__in=[r.pk for r in many_translations]).order_by("pk")
        assert all(row.status == TranslationStatus.DONE and row.text for row in rows)
        # es->en on the pair model shared one forward pass; fr->en went to the many-to-many model.
        assert sorted(row.batch_size for row in rows) == [1, 5, 5, 5, 5, 5]

    def test_results_go_to_the_right_rows(self, many_translations):
        class Echo(StandInEngine):
            """Answers each text with a text of its own: a permutation would show."""

            def translate(self, texts, source, target, glossary=None):
                return [f"{source}>{target}:{text}" for text in texts]

        translation_run_batch(list(reversed(deliveries(many_translations))), engines=lambda spec: Echo())
        for row in Translation.objects.filter(pk__in=[r.pk for r in many_translations]).select_related("message"):
            assert row.text == f"{row.source_language}>en:{row.message.text}"

    def test_the_forward_pass_sees_the_batch_in_the_batchers_order(self, many_translations):
        seen = []

        class Recorder(StandInEngine):
            def translate(self, texts, source, target, glossary=None):
                seen.extend(texts)
                return list(texts)

        spanish = [row for row in many_translations if row.source_language == "es"]
        translation_run_batch(list(reversed(deliveries(spanish))), engines=lambda spec: Recorder())
        assert seen == [row.message.text for row in reversed(spanish)]

    def test_a_poisoned_input_fails_alone(self, many_translations):
        poisoned = many_translations[2]
        poisoned.message.text = "palabra " * 600
        poisoned.message.save()
        outcomes = translation_run_batch(deliveries(many_translations))
        assert outcomes[2] is RunOutcome.FAILED
        assert outcomes[:2] + outcomes[3:] == [RunOutcome.DONE] * 5
        poisoned.refresh_from_db()
        assert "the model accepts at most 512" in poisoned.failure_reason

    def test_a_poisoned_input_in_a_batch_of_64_fails_alone_with_its_reason(self, api_client_key, tiny_models,
                                                                           django_capture_on_commit_callbacks):
        from cs_portal.portal.services import agent_create, conversation_create, message_create_from_customer

        agent_create(username="sam", password="secret-pass", working_language="en")
        conversation = conversation_create(api_client=api_client_key[0], customer_name="Ana")
        with django_capture_on_commit_callbacks(execute=False):
            rows = [
                message_create_from_customer(
                    conversation=conversation, language="es",
                    text="palabra " * 600 if n == 41 else f"Mi pedido {n} no ha llegado.",
                ).translations.get()
                for n in range(64)
            ]
        outcomes = translation_run_batch(deliveries(rows))
        assert outcomes[41] is RunOutcome.FAILED
        assert [o for n, o in enumerate(outcomes) if n != 41] == [RunOutcome.DONE] * 63
        stored = {row.pk: row for row in Translation.objects.filter(pk__in=[r.pk for r in rows])}
        assert "the model accepts at most 512" in stored[rows[41].pk].failure_reason
        assert all(stored[r.pk].status == TranslationStatus.DONE and stored[r.pk].batch_size == 64
                   for n, r in enumerate(rows) if n != 41)

    def test_a_batch_too_large_for_the_device_is_split_until_it_fits(self, many_translations):
        """An out-of-memory error (as CUDA raises it) fails the forward pass, not the jobs: the
        group is run again in halves, and every job is done."""
        calls = []

        class SmallDevice(StandInEngine):
            def translate(self, texts, source, target, glossary=None):
                calls.append(len(texts))
                if len(texts) > 2:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return [f"[{target}] {text}" for text in texts]

        spanish = [row for row in many_translations if row.source_language == "es"]
        outcomes = translation_run_batch(deliveries(spanish), engines=lambda spec: SmallDevice())
        assert outcomes == [RunOutcome.DONE] * 5
        assert calls == [5, 2, 3, 1, 2]  # halves, and the half that was still too large halved again
        assert all(row.status == TranslationStatus.DONE for row in Translation.objects.filter(pk__in=[r.pk for r in spanish]))

    def test_a_job_twice_in_one_batch_runs_once(self, many_translations):
        first = many_translations[0]
        outcomes = translation_run_batch(deliveries([first, first]))
        assert outcomes == [RunOutcome.DONE, RunOutcome.SKIPPED]
        first.refresh_from_db()
        assert first.attempts == 1

    def test_a_duplicate_reaching_another_lane_leaves_the_job_to_the_lane_computing_it(self, many_translations):
        from translation import claims

        first = many_translations[0]
        beside = []

        class Lane(StandInEngine):
            """While this lane computes, the same job arrives at another lane of the same worker
            (another device loop: another thread, which is what tells lanes apart; run here in
            this test's thread and transaction, under another thread's identity)."""

            def translate(self, texts, source, target, glossary=None):
                with mock.patch.object(claims.threading, "get_ident", return_value=-1):
                    beside.extend(translation_run_batch(deliveries([first]), engines=lambda spec: Lane()))
                return [f"[{target}] {text}" for text in texts]

        assert translation_run_batch(deliveries([first]), engines=lambda spec: Lane()) == [RunOutcome.DONE]
        assert beside == [RunOutcome.SKIPPED]  # acknowledged: the computing lane owns the job
        first.refresh_from_db()
        assert (first.status, first.attempts) == (TranslationStatus.DONE, 1)  # no second attempt
        assert first.pk not in claims._computing  # released with its outcome
        # A lane releases only its own listings: a row another lane claimed again (after this
        # lane queued it for a retry) stays listed for that lane.
        claims._computing[first.pk] = -1
        claims._computing_release([first.pk])
        assert claims._computing.pop(first.pk) == -1
        # Once no lane computes it, the worker's own running row is claimed again (a retry).
        Translation.objects.filter(pk=first.pk).update(status=TranslationStatus.RUNNING, worker="w1")
        assert translation_run_batch(deliveries([first]), engines=lambda spec: Lane()) == [RunOutcome.DONE]

    def test_a_model_that_does_not_load_queues_the_whole_group_again(self, many_translations):
        Translation.objects.filter(pk__in=[r.pk for r in many_translations]).update(model_name="/nonexistent")
        outcomes = translation_run_batch(deliveries(many_translations))
        assert all(isinstance(outcome, TransientFailure) for outcome in outcomes)
        assert set(Translation.objects.values_list("status", flat=True)) == {TranslationStatus.QUEUED}


class HoldTests:
    def test_letting_go_of_an_old_claim_leaves_a_newer_claims_listing(self):
        # A batch's late answer for attempt 1 must not drop the listing of attempt 2, claimed since.
        from translation.claims import translations_hold, translations_let_go
        from translation.claims import _computing

        translations_hold([(987654, 1)], holder=-7)
        translations_hold([(987654, 2)], holder=-7)
        translations_let_go([(987654, 1)], holder=-7)
        assert _computing.get(987654) == (-7, 2)
        translations_let_go([(987654, 2)], holder=-7)
        assert 987654 not in _computing


@pytest.mark.django_db(transaction=True)
def test_a_row_another_claim_holds_is_left_out_and_claimed_once_free():
    """Another worker's claim transaction holds a row (``FOR UPDATE``, as a claim locks it): this
    batch's claim skips it instead of waiting, and takes it at its next delivery once free.

    The rows are committed (another connection must see them), with ids far beyond the
    sequence's: a message for a row of that id left in the test broker by an earlier session
    would let the session's worker claim it first."""
    import time

    import psycopg

    from tests.conftest import database_url

    base = 10**12 + time.time_ns() % 10**9
    rows = Translation.objects.bulk_create([
        Translation(pk=base + i, input_text=f"Mi pedido {i} no ha llegado.", source_language="es",
                    target_language="en", queue="translate.en.locks", engine="hf-seq2seq", model_name="x")
        for i in range(3)
    ])
    held, *rest = rows
    with psycopg.connect(database_url().replace("postgres://", "postgresql://", 1)) as other:
        other.execute("SELECT id FROM translation_translation WHERE id = %s FOR UPDATE", [held.pk])
        jobs = translations_claim(deliveries(rows, "w9@h"))
        assert set(jobs) == {row.pk for row in rest}
        assert Translation.objects.get(pk=held.pk).status == TranslationStatus.QUEUED
        other.rollback()  # the other claim ends without taking it
    assert set(translations_claim(deliveries([held], "w9@h"))) == {held.pk}
