"""The device loop with the batcher and a stand-in engine process: every future is answered."""

import pytest

from translation.batching import Batcher, BatchPolicy, PendingJob
from translation.claims import Delivery
from translation.execution import RunOutcome
from workers.device_loop import DeviceLoop
from workers.engine_process import EngineProcessDied
from tests.stand_ins import StandInEngine

pytestmark = pytest.mark.django_db


class Echo(StandInEngine):
    def __init__(self) -> None:
        self.calls = 0

    def engine(self, spec):
        return self

    def translate(self, texts, source, target, glossary=None):
        self.calls += 1
        return [f"[{target}] {text}" for text in texts]

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        pass


def submit(batcher, rows):
    return [
        batcher.submit(PendingJob(key="k", payload=Delivery(row.pk, "w1", "translate.en"), text="", tokens=1))
        for row in rows
    ]


@pytest.fixture
def spanish(many_translations, monkeypatch):
    import workers.device_loop as device_loop

    # Inside the test's transaction Django would take the connection for a stale one and close
    # it; the loop's refresh of connections is for long-lived worker threads.
    monkeypatch.setattr(device_loop, "close_old_connections", lambda: None)
    return [row for row in many_translations if row.source_language == "es"]


class DeviceLoopTests:
    def test_a_batch_answers_every_future_after_one_forward_pass(self, spanish):
        engines = Echo()
        batcher = Batcher(BatchPolicy(max_batch_size=len(spanish), max_wait_s=1))
        loop = DeviceLoop(batcher, engines)
        futures = submit(batcher, spanish)
        loop.process(batcher.next_batch(timeout=0))
        assert [f.result(timeout=0) for f in futures] == [RunOutcome.DONE] * len(spanish)
        assert engines.calls == 1
        assert (loop.batches, loop.jobs) == (1, len(spanish))

    def test_a_failing_database_answers_every_future_with_the_error(self, spanish, monkeypatch):
        import workers.device_loop as device_loop

        def broken(deliveries, engines):
            raise ConnectionError("database is down")

        monkeypatch.setattr(device_loop, "translation_run_batch", broken)
        batcher = Batcher(BatchPolicy(max_batch_size=len(spanish), max_wait_s=1))
        futures = submit(batcher, spanish)
        DeviceLoop(batcher, Echo()).process(batcher.next_batch(timeout=0))
        for future in futures:
            with pytest.raises(ConnectionError, match="database is down"):
                future.result(timeout=0)

    def test_a_dead_engine_process_answers_waiting_jobs_and_stops_the_worker(self, spanish, monkeypatch):
        import workers.device_loop as device_loop

        class Dead(Echo):
            def alive(self) -> bool:
                return False

        signals = []
        monkeypatch.setattr(device_loop.os, "kill", lambda pid, sig: signals.append(sig))
        batcher = Batcher(BatchPolicy(max_batch_size=100, max_wait_s=5))  # nothing is due yet
        futures = submit(batcher, spanish)
        loop = DeviceLoop(batcher, Dead())
        loop.start()
        loop.join(5)
        assert not loop.is_alive()
        assert signals == [device_loop.signal.SIGTERM]
        for future in futures:
            with pytest.raises(EngineProcessDied):
                future.result(timeout=0)

    def test_the_other_lanes_end_when_one_lanes_engine_dies(self, spanish, monkeypatch):
        import workers.device_loop as device_loop

        class Dead(Echo):
            def alive(self) -> bool:
                return False

        monkeypatch.setattr(device_loop.os, "kill", lambda pid, sig: None)
        batcher = Batcher(BatchPolicy(max_batch_size=100, max_wait_s=5))
        healthy = DeviceLoop(batcher, Echo(), lane=1)
        healthy.start()
        dying = DeviceLoop(batcher, Dead(), lane=0)
        dying.start()
        dying.join(5)
        healthy.join(5)  # the closed batcher ends it, instead of leaving it turning without a wait
        assert not dying.is_alive() and not healthy.is_alive()
