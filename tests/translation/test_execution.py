"""The worker side of the ledger against the real PostgreSQL: claims, idempotent stores, failures."""

from unittest import mock

import pytest

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


def claim(translation, worker="w1"):
    return translation_claim(translation_id=translation.pk, worker=worker, consumed_from="translate.en")


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
        stored = translations_complete([(job, texts[pk]) for pk, job in jobs.items()], batch_size=6, forward_ms=12.5)
        assert stored == set(jobs) - {superseded}
        for row in Translation.objects.filter(pk__in=jobs):
            if row.pk == superseded:
                assert (row.status, row.text, row.worker, row.forward_ms) == (TranslationStatus.RUNNING, "", "w2", None)
            else:
                assert (row.status, row.text, row.batch_size, row.forward_ms) == (TranslationStatus.DONE, texts[row.pk], 6, 12.5)

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

    def test_each_row_keeps_its_model_calls_time(self, many_translations):
        """The model's time is each group's own call, not the batch's whole run (the claim, the
        other group's call, the store): the Spanish pair's call takes 60 ms, the French one 5."""
        import time

        class Slow(StandInEngine):
            def translate(self, texts, source, target, glossary=None):
                time.sleep(0.06 if source == "es" else 0.005)
                return list(texts)

        from translation import metrics

        def observed() -> float:  # the model call histogram's sum, every model together
            return sum(sample.value for family in metrics.forward_seconds.collect() for sample in family.samples
                       if sample.name.endswith("_sum"))

        before = observed()
        translation_run_batch(deliveries(many_translations), engines=lambda spec: Slow())
        took = {row.source_language: row.forward_ms for row in Translation.objects.filter(pk__in=[r.pk for r in many_translations])}
        assert 60 <= took["es"] < 1000 and 5 <= took["fr"] < 60
        assert observed() - before == pytest.approx((took["es"] + took["fr"]) / 1000, abs=0.001)  # one observation per call

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


class EngineLostTests:
    """An input that stops the engine (its process crashes or hangs and is killed) fails alone;
    the jobs that shared its forward pass are stored, their attempts not spent on it."""

    class Stopping(StandInEngine):
        """Stops (as a crashed engine process) on the word ``veneno``; gone until revived."""

        gone = False

        def translate(self, texts, source, target, glossary=None):
            from translation.engines import EngineLost

            if self.gone:
                raise EngineLost("the engine process had ended (exit code -11)", during_call=False)
            if any("veneno" in text for text in texts):
                self.gone = True
                raise EngineLost("the engine process ended (exit code -11)")
            return [f"out: {text}" for text in texts]

    def test_the_input_that_stops_the_engine_fails_alone_and_its_neighbours_are_stored(self, many_translations, settings):
        from cs_portal.portal.models import Message

        settings.TRANSLATION_MAX_ATTEMPTS = 3
        spanish = many_translations[:5]
        poison = spanish[2]
        Message.objects.filter(pk=poison.message_id).update(text="veneno en la caja")
        engine = self.Stopping()

        def run_again():  # the job messages sent again, to a worker whose engine process restarted
            engine.gone = False
            return translation_run_batch(deliveries(spanish), engines=lambda spec: engine)

        outcomes = run_again()  # the five shared one pass: every one a suspect, none charged
        assert all(isinstance(outcome, TransientFailure) for outcome in outcomes)
        for row in Translation.objects.filter(pk__in=[r.pk for r in spanish]):
            assert (row.status, row.attempts, row.runs_alone) == (TranslationStatus.QUEUED, 0, True)
            assert row.failure_reason.startswith("Its forward pass stopped the engine (EngineLost:")

        run_again()  # each alone: the poison first stops it; the rest find it gone, and are not charged
        rows = {row.pk: row for row in Translation.objects.filter(pk__in=[r.pk for r in spanish])}
        assert rows[poison.pk].attempts == 1
        for pk, row in rows.items():
            if row.status == TranslationStatus.QUEUED and pk != poison.pk:
                assert row.attempts == 0 and row.failure_reason.startswith("The engine had stopped before")

        for _ in range(4):
            run_again()
        rows = {row.pk: row for row in Translation.objects.filter(pk__in=[r.pk for r in spanish])}
        failed = rows.pop(poison.pk)
        assert failed.status == TranslationStatus.FAILED and failed.attempts == 3
        assert "EngineLost: the engine process ended (exit code -11)" in failed.failure_reason
        assert all(row.status == TranslationStatus.DONE and row.text.startswith("out: ") and row.batch_size == 1
                   for row in rows.values())
        assert {row.attempts for row in rows.values()} == {1}
