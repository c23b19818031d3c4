"""The job intake's bookkeeping (workers/job_intake.py): pure logic, without a broker. The intake
itself runs in the real worker: tests/integration/test_job_intake.py."""

import threading
import time

import pytest

from workers import job_intake
from workers.job_intake import InFlight, Registry, _payload


class StandInMessage:
    headers = {"id": "task-1"}


def flight(intake=None, started: float | None = None) -> InFlight:
    job = InFlight(intake, StandInMessage(), ack=None, reject=None, args=[1], kwargs={}, embed=None)
    if started is not None:
        job.started = started
    return job


def test_the_payload_is_read_as_the_task_reads_it_and_newer_hints_are_ignored():
    assert _payload(7, "pair", chars=12, queued_at=1.5, some_newer_hint=True) == {
        "translation_id": 7, "batch_key": "pair", "chars": 12, "max_batch": 0, "max_wait_ms": 0, "urgent": False,
        "queued_at": 1.5,
    }
    with pytest.raises(TypeError):  # no row id: the task itself refuses it
        _payload(batch_key="pair")


def test_a_job_is_settled_once_whoever_comes_first():
    registry, job = Registry(), flight()
    registry.add(job)
    assert len(registry) == 1
    assert registry.settle(job) is True
    assert registry.settle(job) is False  # its batch answered after it was given up on, or the reverse
    assert len(registry) == 0


def test_overdue_lists_the_oldest_jobs_only():
    registry, now = Registry(), time.monotonic()
    old, older, recent = flight(started=now - 20), flight(started=now - 10), flight(started=now)
    for job in (old, older, recent):
        registry.add(job)
    assert registry.overdue(5) == [old, older]
    registry.settle(old)
    assert registry.overdue(5) == [older]


def test_a_shutdown_waits_for_the_jobs_in_flight_and_says_how_many_did_not_end():
    registry, job, stuck = Registry(), flight(), flight()
    registry.add(job)
    threading.Timer(0.2, registry.settle, (job,)).start()
    assert registry.wait_empty(timeout=5) == 0
    registry.add(stuck)
    assert registry.wait_empty(timeout=0.2) == 1


def test_an_overdue_job_is_retried_once_and_its_late_answer_is_ignored(monkeypatch):
    class RecordingIntake:  # what expire() hands an overdue job to: its intake's retry
        def __init__(self):
            self.retried = []

        def _retry(self, job, error):
            self.retried.append((job, error))

    registry = Registry()
    monkeypatch.setattr(job_intake, "IN_FLIGHT", registry)
    intake = RecordingIntake()
    overdue, fresh = flight(intake, started=time.monotonic() - 400), flight(intake)
    registry.add(overdue)
    registry.add(fresh)
    assert job_intake.expire(300) == 1
    assert job_intake.expire(300) == 0
    [(job, error)] = intake.retried
    assert job is overdue and isinstance(error, TimeoutError)
    assert registry.settle(overdue) is False  # its batch answering late changes nothing
    assert len(registry) == 1
