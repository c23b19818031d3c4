"""The worker's task events: a batch's worth goes out in one message from the event loop, not in
many small ones from the pool threads (workers/event_buffer.py), with Celery's real dispatcher
on the real Redis."""

import threading
from types import SimpleNamespace

from celery import current_app

from workers.event_buffer import EVENTS_BUFFER_LIMIT, GroupedTaskEvents


def dispatcher_of_a_consumer(connection, *, hub):
    """The dispatcher as Celery's consumer makes it (its Events step), and the step applied."""
    dispatcher = current_app.events.Dispatcher(
        connection, hostname="events-test@h", enabled=True,
        buffer_group=["task"] if hub else None, on_send_buffered=(lambda: None) if hub else None,
    )
    consumer = SimpleNamespace(event_dispatcher=dispatcher, hub=hub)
    GroupedTaskEvents(consumer).start(consumer)
    return dispatcher


def test_pool_threads_only_buffer_a_batchs_events_and_one_flush_sends_them_in_one_message(monkeypatch):
    with current_app.connection_for_write() as connection:
        dispatcher = dispatcher_of_a_consumer(connection, hub=object())
        assert dispatcher.buffer_limit == EVENTS_BUFFER_LIMIT
        published = []
        publish = dispatcher._publish
        monkeypatch.setattr(dispatcher, "_publish", lambda event, *args, **kwargs: (
            published.append(event), publish(event, *args, **kwargs))[1])

        def job_ends(n: int) -> None:  # what each of a batch's pool threads sends
            dispatcher.send("task-succeeded", uuid=f"job-{n}", result="'done'", runtime=0.1)

        threads = [threading.Thread(target=job_ends, args=(n,)) for n in range(128)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert published == []  # with Celery's default limit (24), the threads would have flushed themselves
        dispatcher.flush()  # the event loop's turn
        assert len(published) == 1
        assert sorted(event["uuid"] for event in published[0]) == sorted(f"job-{n}" for n in range(128))
        dispatcher.close()

