"""Claiming ledger rows on a worker against the real PostgreSQL (translation/claims.py): a
batch's queued rows in one statement, running rows by whose claim they are, rows out of attempts
failed, rows another claim holds left out."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.translation.test_execution import claim, deliveries
from translation.claims import Delivery, translations_claim
from translation.execution import translation_complete, translation_fail
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db


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
