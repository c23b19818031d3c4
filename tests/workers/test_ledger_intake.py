"""The ledger intake against PostgreSQL and the real batcher: a woken queue's jobs are claimed as
room frees up, each run once; a batch that never ran gives its claims back."""

import threading
import time

import pytest
import redis
from django.utils import timezone

from tests.conftest import broker_url, wait_for
from tests.workers.conftest import QUEUE, WORKER
from translation.batching import Batcher, BatchPolicy
from translation.dispatch import BELL_KEY, translations_claim_queued
from translation.execution import translation_run_batch
from translation.models import Translation, TranslationStatus
from workers.ledger_intake import LedgerIntake

pytestmark = pytest.mark.django_db(transaction=True)  # the intake and the loop use their own connections

def unfinished() -> int:
    return Translation.objects.filter(queue=QUEUE, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).count()


class LedgerIntakeTests:
    def test_one_wake_up_takes_the_whole_queue_a_room_at_a_time(self, queued, running):
        intake, loop = running()
        in_flight_seen = []
        intake.wake(QUEUE)
        deadline = time.monotonic() + 60
        while unfinished() and time.monotonic() < deadline:
            in_flight_seen.append(intake.in_flight())
            time.sleep(0.01)
        rows = list(Translation.objects.filter(queue=QUEUE))
        assert {(row.status, row.attempts, row.worker) for row in rows} == {(TranslationStatus.DONE, 1, WORKER)}
        assert max(in_flight_seen) <= 4  # never more claimed than the room
        assert intake.wakes == 1 and intake.looks >= 3  # 12 jobs through a room of 4
        assert sum(loop.sizes) == 12 and max(loop.sizes) == 2

    def test_a_queue_not_woken_is_not_looked_at(self, queued, running):
        intake, loop = running()
        intake.wake("translate.some-other-queue")
        wait_for(lambda: intake.looks == 1, timeout=10, what="the other queue's look")
        time.sleep(0.2)
        assert unfinished() == 12 and loop.sizes == []

    def test_jobs_whose_batch_never_ran_go_back_at_once_and_fail_visibly_after_their_attempts(
        self, queued, running, settings
    ):
        intake, loop = running(fail=RuntimeError("the engine process died"))
        intake.wake(QUEUE)
        rows = Translation.objects.filter(queue=QUEUE)
        # Each time given back to queued and claimed again (no backoff: the job did not fail,
        # its batch never ran), until its attempts are spent: then failed with the reason.
        wait_for(lambda: not rows.exclude(status=TranslationStatus.FAILED).exists(), timeout=60,
                 what="every job to use up its attempts")
        attempts = settings.TRANSLATION_MAX_ATTEMPTS
        assert {row.attempts for row in rows} == {attempts}
        assert all(row.failure_reason.startswith(f"Gave up after {attempts} attempts. Its batch did not run (RuntimeError")
                   for row in rows), rows[0].failure_reason
        assert sum(loop.sizes) == 12 * attempts

    def test_jobs_that_waited_for_a_batch_that_never_came_give_their_attempt_back(self, queued, running):
        intake, loop = running(loop_runs=False)  # no device loop: the claimed jobs wait in the batcher
        intake.wake(QUEUE)
        wait_for(lambda: intake.in_flight() == 4, timeout=10, what="a room's worth claimed")
        intake.batcher.close(RuntimeError("the worker stops"))
        back = wait_for(lambda: [row for row in Translation.objects.filter(queue=QUEUE, failure_reason__startswith="Its batch did not run")
                                 if row.status == TranslationStatus.QUEUED] or None,
                        timeout=10, what="the claims given back")
        intake.join(10)  # a closed batcher stops the intake: it claims nothing more
        back = list(Translation.objects.filter(queue=QUEUE, failure_reason__startswith="Its batch did not run"))
        assert len(back) == 4 and not intake.is_alive()
        assert not Translation.objects.filter(queue=QUEUE, status=TranslationStatus.RUNNING).exists()
        assert {(row.status, row.attempts, row.started_at) for row in back} == {(TranslationStatus.QUEUED, 0, None)}

    def test_a_job_waiting_out_its_backoff_is_looked_at_when_it_ends(self, queued, running):
        from datetime import timedelta

        Translation.objects.filter(queue=QUEUE).exclude(pk=queued[0].pk).update(status=TranslationStatus.DONE)
        Translation.objects.filter(pk=queued[0].pk).update(attempts=1, retry_at=timezone.now() + timedelta(seconds=1))
        intake, loop = running()
        intake.wake(QUEUE)  # too early: nothing may be claimed yet
        wait_for(lambda: Translation.objects.get(pk=queued[0].pk).status == TranslationStatus.DONE, timeout=15,
                 what="the job claimed once its backoff ended, with no other wake-up")
        assert intake.wakes == 1 and intake.looks >= 2

    def test_a_job_that_waited_in_the_ledger_does_not_wait_in_the_batcher_again(self, queued):
        # Its wait for batch-mates counts from its queueing: the wake-up and the claim spent it.
        from datetime import timedelta

        Translation.objects.filter(queue=QUEUE).exclude(pk=queued[0].pk).update(status=TranslationStatus.DONE)
        Translation.objects.filter(pk=queued[0].pk).update(enqueued_at=timezone.now() - timedelta(seconds=60))
        batcher = Batcher(BatchPolicy(max_batch_size=8, max_wait_s=10))
        intake = LedgerIntake(batcher, WORKER, room=16, batch=8)
        try:
            intake._take(QUEUE, room=16)
            [job] = batcher.next_batch(timeout=0)  # due now, not in 10 s
            assert job.payload.id == queued[0].pk
            job.future.set_result(None)  # the intake lets go of the row
        finally:
            redis.Redis.from_url(broker_url(15)).delete(QUEUE, BELL_KEY.format(queue=QUEUE))

    def test_a_job_message_for_a_row_the_intake_holds_leaves_it_to_the_intakes_batch(self, queued, beating):
        # A fleet switching dispatch: a jobs-mode message reaches the worker whose intake claimed
        # the row. Claiming it again would compute it twice and spend an attempt.
        from translation.claims import Delivery, _computing
        from translation.execution import RunOutcome

        Translation.objects.filter(queue=QUEUE).exclude(pk=queued[0].pk).update(status=TranslationStatus.DONE)
        batcher = Batcher(BatchPolicy(max_batch_size=8, max_wait_s=0))
        intake = LedgerIntake(batcher, WORKER, room=16, batch=8)
        try:
            intake._take(QUEUE, room=16)
            assert translation_run_batch([Delivery(queued[0].pk, WORKER, QUEUE)]) == [RunOutcome.SKIPPED]
            assert Translation.objects.get(pk=queued[0].pk).attempts == 1
            [pending] = batcher.next_batch(timeout=0)
            [outcome] = translation_run_batch([pending.payload])
            pending.future.set_result(outcome)  # the intake lets go of the row
            assert outcome == RunOutcome.DONE
            row = Translation.objects.get(pk=queued[0].pk)
            assert (row.status, row.attempts) == (TranslationStatus.DONE, 1)
            # Let go: a later message for it finds it done, and a new claim of it would go ahead.
            assert queued[0].pk not in _computing
        finally:
            redis.Redis.from_url(broker_url(15)).delete(QUEUE, BELL_KEY.format(queue=QUEUE))

    def test_a_claim_that_fills_the_room_wakes_the_queue_for_another_worker(self, queued, running):
        broker = redis.Redis.from_url(broker_url(15))
        intake, loop = running(loop_runs=False)
        intake.wake(QUEUE)
        wait_for(lambda: intake.in_flight() == 4, timeout=10, what="a room's worth claimed")
        # A wake-up per full claim (two batches' worth: two), for a worker with room to take.
        assert broker.llen(QUEUE) == 2 and broker.exists(BELL_KEY.format(queue=QUEUE))

    def test_two_workers_claiming_one_queue_at_once_take_different_jobs(self, queued):
        # Two threads, two connections: SKIP LOCKED gives each row to one of them.
        from django.db import connection

        taken: dict[str, list[int]] = {}
        start = threading.Barrier(2)

        def claim(worker: str) -> None:
            try:
                start.wait()
                taken[worker] = [job.id for job in translations_claim_queued(QUEUE, worker=worker, limit=12)]
            finally:
                connection.close()

        threads = [threading.Thread(target=claim, args=(f"w{i}@h",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(taken["w0@h"] + taken["w1@h"]) == sorted(row.pk for row in queued)
        for worker, ids in taken.items():
            assert set(Translation.objects.filter(pk__in=ids).values_list("worker", flat=True)) <= {worker}
