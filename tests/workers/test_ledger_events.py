"""Ledger jobs in Flower: the intake's task events, sent through the real Redis broker and read
back with Celery's event receiver into the state Flower keeps (``celery.events.state.State``)."""

import threading
import time

import pytest
import redis

from cs_portal.celery import app
from tests.conftest import broker_url, wait_for
from tests.workers.conftest import QUEUE, WORKER
from translation.dispatch import BELL_KEY
from translation.models import Translation, TranslationStatus
from translation.tasks import TRANSLATE_TASK
from translation.task_events import LedgerTaskEvents, task_id

pytestmark = pytest.mark.django_db(transaction=True)


class Listening(threading.Thread):
    """Celery's event receiver in a thread, feeding a ``State`` as Flower's does."""

    def __init__(self) -> None:
        from celery.events.state import State

        super().__init__(daemon=True)
        self.state = State()
        self.seen: list[tuple[str, str]] = []  # (type, task id) of every event heard
        self.ready = threading.Event()
        self._receiver = None

    def on_event(self, event: dict) -> None:
        self.seen.append((event["type"], event.get("uuid", "")))
        if event["type"] == "test-listening":
            self.ready.set()
        self.state.event(event)

    def run(self) -> None:
        with app.connection_for_read() as connection:
            self._receiver = app.events.Receiver(connection, handlers={"*": self.on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> "Listening":
        self.start()
        # Redis delivers an event only to a subscriber already listening: ping until one arrives.
        with app.events.default_dispatcher(hostname="test-listener") as dispatcher:
            deadline = time.monotonic() + 20
            while not self.ready.wait(0.2):
                assert time.monotonic() < deadline, "the event receiver never heard its own ping"
                dispatcher.send("test-listening")
        return self

    def __exit__(self, *exc) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self.join(5)

    def tasks_of(self, rows) -> dict[int, object]:
        """The tasks Flower would list for ``rows``, by row id."""
        ids = {f"[{row.pk}]": row.pk for row in rows}
        return {ids[task.args]: task for task in list(self.state.tasks.values()) if task.args in ids}

    def count(self, type: str, rows) -> int:
        """Events of ``type`` heard for ``rows``' tasks."""
        ids = {task.uuid for task in self.tasks_of(rows).values()}
        return sum(1 for seen, uuid in self.seen if seen == type and uuid in ids)


def drop_bell() -> None:
    redis.Redis.from_url(broker_url(15)).delete(QUEUE, BELL_KEY.format(queue=QUEUE))


class LedgerTaskEventsTests:
    def test_flower_lists_every_ledger_job_as_a_translate_task_of_its_worker(self, queued, running):
        events = LedgerTaskEvents(app, WORKER, enabled=True)
        with Listening() as listening:
            intake, loop = running(events=events)
            intake.wake(QUEUE)
            wait_for(lambda: not Translation.objects.filter(
                queue=QUEUE, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
                timeout=60, what="the queue's jobs to finish")
            wait_for(lambda: len([t for t in listening.tasks_of(queued).values() if t.state == "SUCCESS"]) == 12,
                     timeout=10, what="every job's success event")
        tasks = listening.tasks_of(queued)
        for row in Translation.objects.filter(queue=QUEUE):
            task = tasks[row.pk]
            assert (task.name, task.hostname, task.result, task.retries) == (TRANSLATE_TASK, WORKER, "'done'", 0)
            assert task.received and task.started and task.succeeded >= task.started and task.runtime >= 0
            assert "'dispatch': 'ledger'" in task.kwargs and f"'queue': '{QUEUE}'" in task.kwargs
        # Grouped: a batch's events in one message (12 jobs, batches of 2), not one per event.
        assert 1 <= events.flushes < 36
        assert listening.count("task-received", queued) == 12 and events.lost == 0
        drop_bell()

    def test_a_job_whose_batch_never_ran_is_retried_then_ends_failed_as_in_jobs_dispatch(
        self, queued, running, settings
    ):
        # A translate task whose job failed returns 'failed' (the task itself succeeded); the
        # ledger's job ends the same way in Flower, after a retried event per attempt.
        events = LedgerTaskEvents(app, WORKER, enabled=True)
        with Listening() as listening:
            intake, loop = running(fail=RuntimeError("the engine process died"), events=events)
            intake.wake(QUEUE)
            rows = Translation.objects.filter(queue=QUEUE)
            wait_for(lambda: not rows.exclude(status=TranslationStatus.FAILED).exists(), timeout=60,
                     what="every job to use up its attempts")
            wait_for(lambda: len([t for t in listening.tasks_of(queued).values() if t.result == "'failed'"]) == 12,
                     timeout=10, what="every job's end")
        tasks = listening.tasks_of(queued)
        attempts = settings.TRANSLATION_MAX_ATTEMPTS
        assert {(task.state, task.retries) for task in tasks.values()} == {("SUCCESS", attempts)}
        assert listening.count("task-retried", queued) == 12 * attempts  # each attempt's batch, given back
        drop_bell()

    def test_jobs_finishing_while_the_worker_drains_still_reach_flower(self, queued, running):
        events = LedgerTaskEvents(app, WORKER, enabled=True)
        with Listening() as listening:
            intake, loop = running(loop_runs=False, events=events)  # the claimed jobs wait in the batcher
            intake.wake(QUEUE)
            wait_for(lambda: intake.in_flight() == 4, timeout=10, what="a room's worth claimed")
            loop.start()
            assert intake.drain(timeout=30) == 0  # the worker stops: its claimed jobs finish first
            done = list(Translation.objects.filter(queue=QUEUE, status=TranslationStatus.DONE))
            wait_for(lambda: len([t for t in listening.tasks_of(done).values() if t.state == "SUCCESS"]) == 4,
                     timeout=10, what="the drained jobs' success events")
        assert len(done) == 4 and events.lost == 0
        drop_bell()

    def test_events_off_sends_nothing_and_opens_no_connection(self, queued, running):
        events = LedgerTaskEvents(app, WORKER, enabled=False)
        intake, loop = running(events=events)
        intake.wake(QUEUE)
        wait_for(lambda: not Translation.objects.filter(
            queue=QUEUE, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
            timeout=60, what="the queue's jobs to finish")
        assert events.flushes == 0 and events._dispatcher is None
        drop_bell()

    def test_a_broker_that_refuses_the_events_loses_them_not_the_jobs(self, queued, running):
        # A broker nobody listens on: every flush fails, is counted and dropped, and the jobs are done.
        from prometheus_client import REGISTRY

        def dropped() -> float:  # what the operators' metric says
            return REGISTRY.get_sample_value("translation_worker_task_events_dropped_total", {"worker": WORKER}) or 0.0

        before = dropped()
        dead = app.connection_for_write("redis://127.0.0.1:1/0")
        events = LedgerTaskEvents(app, WORKER, enabled=True, connection=dead)
        intake, loop = running(events=events)
        intake.wake(QUEUE)
        wait_for(lambda: not Translation.objects.filter(
            queue=QUEUE, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
            timeout=60, what="the queue's jobs to finish")
        assert {row.status for row in Translation.objects.filter(queue=QUEUE)} == {TranslationStatus.DONE}
        wait_for(lambda: events.lost >= 12 * 3, timeout=10, what="the events counted as lost")
        assert dropped() - before == events.lost
        assert not events._dispatcher._group_buffer["task"]  # nothing piles up
        drop_bell()


def test_a_rows_task_id_is_kept_over_its_attempts_and_differs_between_rows():
    from dataclasses import replace
    from datetime import datetime, timezone

    from translation.claims import Job
    from translation.engines import EngineSpec

    job = Job(id=7, attempt=1, claim=1, text="hola", source="es", target="en", spec=EngineSpec("hf-seq2seq", "m"),
              requested_at=datetime(2026, 11, 27, tzinfo=timezone.utc))
    assert task_id(job) == task_id(replace(job, attempt=2))
    assert task_id(job) != task_id(replace(job, id=8))
    assert task_id(job) != task_id(replace(job, requested_at=datetime(2026, 11, 28, tzinfo=timezone.utc)))


def test_a_worker_without_a_batcher_sends_its_ledger_jobs_events_too(queued, beating):
    # ``--no-batching``: the wake-up's own task claims and runs the queue, a batch at a time.
    from translation.dispatch import translation_run_queued

    events = LedgerTaskEvents(app, WORKER, enabled=True)
    with Listening() as listening:
        ran, _ = translation_run_queued(queue=QUEUE, worker=WORKER, batch=5, events=events)
        wait_for(lambda: len([t for t in listening.tasks_of(queued).values() if t.state == "SUCCESS"]) == 12,
                 timeout=10, what="every job's success event")
    assert ran == 12
    assert {(task.name, task.hostname, task.result) for task in listening.tasks_of(queued).values()} == {
        (TRANSLATE_TASK, WORKER, "'done'")}
    events.close()
    drop_bell()


def test_the_events_follow_the_workers_own_switch_and_its_remote_commands(monkeypatch):
    # The consumer's event dispatcher (a real one, not connected) as Celery's Events step makes
    # it: with CELERY_TASK_EVENTS off it sends only the "worker" group; Flower's and an
    # operator's enable_events / disable_events add and remove "task" (celery.worker.control).
    from translation import task_events

    events = LedgerTaskEvents(app, WORKER)
    monkeypatch.setattr(task_events, "_consumer", None)
    monkeypatch.setitem(app.conf, "worker_send_task_events", False)
    assert not events.enabled  # before the consumer is ready: the setting
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname=WORKER, enabled=True, groups=["worker"])
        monkeypatch.setattr(task_events, "_consumer", type("Consumer", (), {"event_dispatcher": dispatcher})())
        assert not events.enabled
        dispatcher.groups.add("task")  # enable_events
        assert events.enabled
        dispatcher.groups.discard("task")  # disable_events
        assert not events.enabled
        dispatcher.groups.clear()  # CELERY_TASK_EVENTS on: every group
        assert events.enabled
        dispatcher.enabled = False
        assert not events.enabled
        dispatcher.close()
