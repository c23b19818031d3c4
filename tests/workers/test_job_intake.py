"""The job intake's bookkeeping (workers/job_intake.py): pure logic, without a broker. The intake
itself runs in the real worker: tests/integration/test_job_intake.py."""

import threading
import time

import pytest

from workers import job_intake
from workers.in_flight import InFlight, Registry
from workers.job_intake import _payload, request_context


class StandInMessage:
    def __init__(self) -> None:
        self.headers = {"id": "task-1", "task": "translation.translate", "argsrepr": "[7]", "kwargsrepr": "{}"}


def flight(intake=None, started: float | None = None) -> InFlight:
    job = InFlight(intake, StandInMessage(), ack=None, reject=None, name="translation.translate")
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


def test_the_payload_takes_the_tasks_arguments_with_the_tasks_defaults():
    import inspect

    from translation.tasks import translate

    def parameters(function, skip=()):
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values() if p.name not in skip]

    assert parameters(_payload) == parameters(translate.run, skip=("self",))


def test_a_retry_goes_back_to_the_queue_and_the_priority_its_message_came_with():
    """The retry's message is built from the request context Celery's own request builds for the
    message: same queue, same priority (kombu keeps a message's priority in its properties)."""
    from celery.app.task import Context
    from kombu import Connection

    from cs_portal.celery import app
    from translation.tasks import translate

    with Connection("memory://") as connection:
        translate.apply_async(args=[5], kwargs={"chars": 12}, queue="translate.en", priority=6, connection=connection,
                              task_id="task-5")
        message = connection.SimpleQueue("translate.en").get(timeout=1)
        context = request_context(app, app.tasks[translate.name], message, "worker@host")
    assert (context["id"], context["args"], context["kwargs"], context["retries"]) == ("task-5", [5], {"chars": 12}, 0)
    retry = translate.signature_from_request(Context(**context), countdown=1, retries=1)
    assert retry.options["queue"] == "translate.en"
    assert retry.options["priority"] == 6
    assert retry.options["task_id"] == "task-5"


def test_a_job_stands_among_the_active_requests_while_in_flight_and_reads_as_one():
    """Celery's sets of requests (weak, as Celery's): the job is active from its submission until
    its message is settled, and leaves the reserved requests too (a closed connection moves the
    active requests there)."""
    import weakref
    from types import SimpleNamespace

    from translation.tasks import translate

    active, reserved = weakref.WeakSet(), weakref.WeakSet()
    registry = Registry(active, reserved)
    intake = SimpleNamespace(task=translate, hostname="worker@host")
    job = InFlight(intake, StandInMessage(), ack=None, reject=None, name="translation.translate", args=[7],
                   kwargs={"chars": 12})
    job.message.delivery_info = {"routing_key": "translate.en", "exchange": ""}
    job.message.properties = {"priority": 5}  # where kombu keeps a message's priority
    registry.add(job)
    assert job in active
    reserved.add(job)
    assert (job.id, job.task.acks_late, job.acknowledged) == ("task-1", True, False)
    info = job.info(safe=True)
    assert (info["id"], info["name"], info["args"], info["hostname"]) == ("task-1", "translation.translate", "[7]", "worker@host")
    assert info["delivery_info"] == {"exchange": "", "routing_key": "translate.en", "priority": 5, "redelivered": False}
    assert info["time_start"] > 0 and str(job) == "translation.translate[task-1]"
    assert (job.info()["args"], job.info()["kwargs"]) == ([7], {"chars": 12})  # unsafe: as decoded
    job.cancel(None, emit_retry=False)  # a cold shutdown's cancel: the batch runs on
    assert job in active
    # A closed connection moves the active requests to the reserved ones, and the new one's
    # event dispatcher is handed to each (celery/worker/consumer/events.py, Events.start).
    for request in tuple(reserved):
        request.eventer = object()
    registry.done(job)
    assert job not in active and job not in reserved


def test_a_job_is_claimed_once_whoever_comes_first_and_leaves_once_settled():
    registry, job = Registry(), flight()
    registry.add(job)
    assert registry.claim(job) is True
    assert registry.claim(job) is False  # its batch answered after it was given up on, or the reverse
    assert len(registry) == 1  # until its message is settled
    registry.done(job)
    assert len(registry) == 0


def test_overdue_lists_the_oldest_jobs_only():
    registry, now = Registry(), time.monotonic()
    old, older, recent = flight(started=now - 20), flight(started=now - 10), flight(started=now)
    for job in (old, older, recent):
        registry.add(job)
    assert registry.overdue(5) == [old, older]
    registry.claim(old)  # being retried: no longer overdue
    assert registry.overdue(5) == [older]


def test_a_shutdown_waits_for_the_jobs_in_flight_and_says_how_many_did_not_end():
    registry, job, stuck = Registry(), flight(), flight()
    registry.add(job)
    threading.Timer(0.2, registry.done, (job,)).start()
    assert registry.wait_empty(timeout=5) == 0
    registry.add(stuck)
    assert registry.wait_empty(timeout=0.2) == 1
    started = time.monotonic()
    assert registry.wait_empty(timeout=30, give_up=lambda: True) == 1  # a cold shutdown does not wait
    assert time.monotonic() - started < 5


def test_an_overdue_job_is_retried_once_and_its_late_answer_is_ignored(monkeypatch):
    registry, retried = Registry(), []
    monkeypatch.setattr(job_intake, "IN_FLIGHT", registry)
    monkeypatch.setattr(job_intake.RETRIES, "put", lambda job, error: retried.append((job, error)))
    overdue, fresh = flight(started=time.monotonic() - 400), flight()
    registry.add(overdue)
    registry.add(fresh)
    assert job_intake.expire(300) == 1
    assert job_intake.expire(300) == 0
    [(job, error)] = retried
    assert job is overdue and isinstance(error, TimeoutError)
    assert registry.claim(overdue) is False  # its batch answering late changes nothing
