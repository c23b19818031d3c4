"""What the ledger intake's tests share: queued jobs on a test queue, a worker that beats, and an
intake with a device loop (the real batcher and execution layer)."""

import threading

import pytest
import redis
from django.db import close_old_connections
from django.utils import timezone

from tests.conftest import broker_url
from translation.batching import Batcher, BatchPolicy
from translation.dispatch import BELL_KEY, translations_start
from translation.execution import translation_run_batch
from translation.models import Translation
from workers.ledger_intake import LedgerIntake

QUEUE = "translate.intake-test"
WORKER = "intake-test@h"


@pytest.fixture
def queued(tiny_models):
    """Twelve queued es->en jobs on the test queue, rows of the ledger only (no message sent)."""
    return [
        Translation.objects.create(
            input_text=f"Mi pedido número {i} no ha llegado.", source_language="es", target_language="en", queue=QUEUE,
            engine="hf-seq2seq", model_name=str(tiny_models.marian_es_en), precision="fp32",
        )
        for i in range(12)
    ]


class Loop(threading.Thread):
    """The device loop's part: batches from the batcher, run by the execution layer, answered.
    ``fail`` answers every batch with that error instead, as a loop whose engine died does."""

    def __init__(self, batcher: Batcher, fail: Exception | None = None) -> None:
        super().__init__(daemon=True)
        self.batcher, self.fail = batcher, fail
        self.sizes: list[int] = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            batch = self.batcher.next_batch(timeout=0.1)
            if not batch:
                continue
            self.sizes.append(len(batch))
            if self.fail:  # the batch started (its rows say so), then its engine died
                translations_start([job.payload for job in batch])
                outcomes = [self.fail] * len(batch)
            else:
                outcomes = translation_run_batch([job.payload for job in batch])
            for job, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
            self.batcher.batch_done()
        close_old_connections()


@pytest.fixture
def beating():
    """The test's worker beats, as a live worker does: another worker's reconciler (the test
    session's) would otherwise take its claims for a dead worker's and hand them over."""
    from django.db.models.functions import Now

    from workers.models import WorkerHeartbeat

    WorkerHeartbeat.objects.create(name=WORKER, hostname="h", pid=1, device="cpu", queues=[QUEUE], ready=True,
                                   started_at=timezone.now(), beat_at=timezone.now())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            WorkerHeartbeat.objects.filter(name=WORKER).update(beat_at=Now(), loop_at=Now())
        close_old_connections()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


@pytest.fixture
def running(beating):
    """Start an intake (room 4, batches of 2) and a loop; stop both after the test."""
    started = []

    def start(fail: Exception | None = None, *, loop_runs: bool = True, events=None) -> tuple[LedgerIntake, Loop]:
        batcher = Batcher(BatchPolicy(max_batch_size=2, max_wait_s=0.005))
        intake, loop = LedgerIntake(batcher, WORKER, room=4, batch=2, events=events), Loop(batcher, fail)
        started.append((intake, loop))
        if loop_runs:
            loop.start()
        intake.start()
        return intake, loop

    yield start
    for intake, loop in started:
        intake.stop()
        loop.stopping = True
        intake.join(5)
        if loop.is_alive():
            loop.join(5)
        if intake.events is not None:  # its sender thread and connection
            intake.events.close()
    redis.Redis.from_url(broker_url(15)).delete(QUEUE, BELL_KEY.format(queue=QUEUE))
