"""The Redis transport (cs_portal/broker.py) against the real test Redis: one client per channel
and pool, shared by threads, and messages through it arrive whole."""

import json
import threading
from contextlib import contextmanager

from celery import current_app
from kombu import Exchange, Queue

from cs_portal.broker import Channel


def test_the_project_app_uses_the_shared_client_transport():
    with current_app.connection_for_write() as connection:
        assert isinstance(connection.default_channel, Channel)
        assert connection.transport.driver_type == "redis"  # what translation.queues checks
        # The URL keeps its scheme: Flower picks its queue-length client by it.
        assert connection.as_uri().startswith("redis://")


def test_one_client_per_channel_until_its_pool_is_replaced():
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool
        # The blocking BRPOP client stays kombu's own, one per call, on the async pool.
        assert channel._create_client(asynchronous=True) is not first
        channel._disconnect_pools()  # what kombu does when the channel reconnects
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool is not first.connection_pool
        assert second.ping()


def test_threads_publishing_through_one_channel_deliver_every_message(broker):
    queue = Queue("test.broker.shared", Exchange("test.broker.shared", type="direct"), routing_key="test.broker.shared")
    sent = [f"message {thread}-{i}" for thread in range(8) for i in range(50)]
    with current_app.connection_for_write() as connection:
        producer = connection.Producer()
        producer.declare()
        queue(connection.default_channel).declare()
        queue(connection.default_channel).purge()
        errors = []

        def publish(thread: int) -> None:
            try:
                for i in range(50):
                    producer.publish(f"message {thread}-{i}", exchange=queue.exchange, routing_key=queue.routing_key,
                                     serializer="json")
            except Exception as exc:  # reported below: an exception in a thread would be lost
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        received = []
        with connection.SimpleQueue(queue) as simple:
            while len(received) < len(sent):
                message = simple.get(timeout=5)
                received.append(message.payload)
                message.ack()
        assert sorted(received) == sorted(sent)
        queue(connection.default_channel).delete()


def test_a_key_prefixed_channel_shares_its_client_and_prefixes_every_key(broker):
    with current_app.connection_for_write(transport_options={"global_keyprefix": "test-prefix:"}) as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        assert channel._create_client() is channel._create_client()
        queue = Queue("test.broker.prefixed", Exchange("test.broker.prefixed", type="direct"), routing_key="test.broker.prefixed")
        queue(channel).declare()
        connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key, serializer="json")
        assert broker.llen("test-prefix:test.broker.prefixed") == 1
        assert broker.llen("test.broker.prefixed") == 0
        with connection.SimpleQueue(queue) as simple:
            message = simple.get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()
        queue(channel).delete()


def _queue_with(broker, name: str, count: int, connection):
    """A fresh queue on ``connection`` holding ``count`` JSON messages, {"n": 0} ... in order."""
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    queue(connection.default_channel).declare()
    queue(connection.default_channel).purge()
    producer = connection.Producer()
    for n in range(count):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key, serializer="json")
    return queue


def _indexed(broker, channel, message, prefix: str = "") -> bool:
    """Whether ``message`` is in the channel's unacked index (both its hash and its sorted set)."""
    tag = message.delivery_tag
    in_hash = broker.hexists(prefix + channel.unacked_key, tag)
    in_index = broker.zscore(prefix + channel.unacked_index_key, tag) is not None
    assert in_hash == in_index, "the unacked hash and its index disagree"
    return in_hash


def test_one_wake_up_takes_as_many_messages_as_the_prefetch_allows_each_indexed_before_delivery(broker):
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.many", 10, connection)
        received = []

        def on_message(body, message):
            # Handed over only once in the unacked index: a crash from here on loses nothing.
            assert _indexed(broker, channel, message)
            received.append(message)

        with connection.Consumer(queue, callbacks=[on_message], prefetch_count=4):
            connection.drain_events(timeout=5)  # one BRPOP's answer
            assert [message.payload["n"] for message in received] == [0, 1, 2, 3]  # oldest first
            assert broker.llen("test.broker.many") == 6
            # What a restore puts back: each message as it was popped, its exchange and routing key.
            prefix = channel.global_keyprefix or ""
            for message in received:
                entry = json.loads(broker.hget(prefix + channel.unacked_key, message.delivery_tag))
                assert entry == [json.loads(json.dumps(message._raw)), message.delivery_info["exchange"],
                                 message.delivery_info["routing_key"]]
                assert entry[0]["properties"]["delivery_tag"] == message.delivery_tag
            # Acknowledged from several threads at once: every one is off the index on return.
            threads = [threading.Thread(target=message.ack) for message in received]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not any(_indexed(broker, channel, message) for message in received)
            connection.drain_events(timeout=5)  # room again: the next four
            assert [message.payload["n"] for message in received[4:]] == [4, 5, 6, 7]
            for message in received[4:]:
                message.ack()
        queue(channel).delete()


def test_without_a_prefetch_limit_a_wake_up_takes_at_most_a_batch(broker):
    from cs_portal.broker import MORE_PER_WAKE

    with current_app.connection_for_write() as connection:
        queue = _queue_with(broker, "test.broker.unlimited", MORE_PER_WAKE + 10, connection)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)]):
            connection.drain_events(timeout=5)
            assert len(received) == 1 + MORE_PER_WAKE
            for message in received:
                message.ack()
        queue(connection.default_channel).delete()


def test_a_consumer_without_acknowledgements_takes_one_message_per_wake_up(broker):
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.no-ack", 3, connection)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], no_ack=True):
            connection.drain_events(timeout=5)
        # kombu's own behaviour: nothing to index, so nothing popped ahead of the consumer.
        assert [message.payload["n"] for message in received] == [0]
        assert not _indexed(broker, channel, received[0])
        assert broker.llen("test.broker.no-ack") == 2
        queue(channel).delete()


def test_a_key_prefixed_channel_takes_several_messages_per_wake_up(broker):
    with current_app.connection_for_write(transport_options={"global_keyprefix": "test-prefix:"}) as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.prefixed-many", 3, connection)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=3):
            connection.drain_events(timeout=5)
            assert [message.payload["n"] for message in received] == [0, 1, 2]
            assert all(_indexed(broker, channel, message, prefix="test-prefix:") for message in received)
            assert broker.llen("test-prefix:test.broker.prefixed-many") == 0
            for message in received:
                message.ack()
            assert not any(_indexed(broker, channel, message, prefix="test-prefix:") for message in received)
        queue(channel).delete()


@contextmanager
def _event_loop():
    """A kombu event loop (``Hub``) current in this thread, as if this thread ran it (as Celery's
    consumer runs its own): acknowledgements made here are listed for its ticks."""
    from kombu.asynchronous import Hub, get_event_loop, set_event_loop

    previous, hub = get_event_loop(), Hub()
    set_event_loop(hub)
    hub._loop_thread = threading.get_ident()
    try:
        yield hub
    finally:
        set_event_loop(previous)
        hub.close()


def test_acknowledgements_made_in_the_event_loop_go_out_together_before_it_polls_again(broker):
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.loop-acks", 3, connection)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=3):
            connection.drain_events(timeout=5)
            with _event_loop() as hub:
                for message in received:
                    message.ack()
                # Listed, not sent yet: one pipeline for the turn's acknowledgements, on the loop's tick.
                assert all(_indexed(broker, channel, message) for message in received)
                assert len(hub.on_tick) == 1
                for tick in list(hub.on_tick):
                    tick()
                assert not any(_indexed(broker, channel, message) for message in received)
        assert [message.payload["n"] for message in received] == [0, 1, 2]
        queue(channel).delete()


def test_acknowledgements_a_tick_cannot_send_are_kept_for_the_next_and_logged_once(broker, caplog, monkeypatch):
    """Redis unreachable on the loop's tick: the turn's acknowledgements stay listed (and their
    messages indexed), one warning for the outage, and the first tick that gets through sends
    them all, with the acknowledgements made meanwhile."""
    import logging

    from redis.exceptions import ConnectionError as RedisConnectionError

    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.failing-acks", 4, connection)
        received = []
        qos = channel.qos
        real, failing = qos.pipe_or_acquire, [True, True]

        @contextmanager
        def unreachable_twice(*args, **kwargs):
            if failing and failing.pop(0):
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            with real(*args, **kwargs) as pipe:
                yield pipe

        with caplog.at_level(logging.WARNING, logger="cs_portal.broker"), \
                connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=4):
            connection.drain_events(timeout=5)
            assert len(received) == 4
            with _event_loop() as hub:
                monkeypatch.setattr(qos, "pipe_or_acquire", unreachable_twice)
                for message in received[:2]:
                    message.ack()
                for _ in range(2):  # two ticks while Redis is unreachable
                    for tick in list(hub.on_tick):
                        tick()
                assert all(_indexed(broker, channel, message) for message in received[:2])  # kept
                for message in received[2:]:  # acknowledged meanwhile
                    message.ack()
                for tick in list(hub.on_tick):  # Redis answers again
                    tick()
                assert not any(_indexed(broker, channel, message) for message in received)
        queue(channel).delete()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == ["Could not acknowledge messages; trying again"]


def test_messages_that_cannot_be_indexed_go_back_where_they_were_in_their_order(broker):
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.put-back", 5, connection)
        key = "test.broker.put-back"
        popped = broker.rpop(key, 3)  # what a wake-up takes beyond its first message
        channel._push_back(key, popped)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=5):
            connection.drain_events(timeout=5)
            assert [message.payload["n"] for message in received] == [0, 1, 2, 3, 4]
            for message in received:
                message.ack()
        queue(channel).delete()


def test_a_wake_up_whose_index_write_fails_puts_the_extra_messages_back_and_loses_none(broker):
    """The unacked index cannot be written (the broker failing between the pop and the pipeline):
    the first message is kombu's own, the others go back to the list, and the next wake-ups
    deliver them in their order."""
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.index-fails", 5, connection)
        received = []
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=5):
            original, tried = channel.qos.index, []

            def failing(messages, raws=None):
                tried.append(len(messages))
                raise ConnectionError("the broker went away mid-pipeline")

            channel.qos.index = failing
            try:
                connection.drain_events(timeout=5)
            finally:
                channel.qos.index = original
            assert tried == [4]  # the four more popped at once
            assert [message.payload["n"] for message in received] == [0]  # BRPOP's own, indexed by kombu
            assert broker.llen("test.broker.index-fails") == 4  # the rest, back in the list
            while len(received) < 5:
                connection.drain_events(timeout=5)
            assert [message.payload["n"] for message in received] == [0, 1, 2, 3, 4]
            for message in received:
                message.ack()
        queue(channel).delete()


def test_a_refused_pop_is_logged_once_per_spell_and_its_wake_ups_still_deliver(broker, caplog, monkeypatch):
    """A server that refuses ``RPOP key count`` for another reason than its version (an ACL's
    NOPERM, a replica's READONLY): one message per wake-up meanwhile, one warning per spell."""
    import logging
    from contextlib import contextmanager

    from redis.exceptions import ResponseError

    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        queue = _queue_with(broker, "test.broker.refused", 6, connection)
        refusing = [True, True, False, True]  # each wake-up's answer to the extra pop
        real = channel.conn_or_acquire

        class Answering:  # the real client, but for the extra pops' answers above
            def __init__(self, client):
                self.client = client

            def __getattr__(self, name):
                return getattr(self.client, name)

            def rpop(self, key, count=None):
                if count is not None and refusing and refusing.pop(0):
                    raise ResponseError("NOPERM this user has no permissions to run the 'rpop' command")
                return self.client.rpop(key, count)

        @contextmanager
        def answering(*args, **kwargs):
            with real(*args, **kwargs) as client:
                yield Answering(client)

        monkeypatch.setattr(channel, "conn_or_acquire", answering)
        received = []
        with caplog.at_level(logging.INFO, logger="cs_portal.broker"), \
                connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)], prefetch_count=2):
            taken = []
            for _ in range(4):  # refused, refused, a pop of one more, refused again (a new spell)
                connection.drain_events(timeout=5)
                taken.append([message.payload["n"] for message in received])
                for message in received:
                    message.ack()
                received.clear()
            assert taken == [[0], [1], [2, 3], [4]]
        queue(channel).delete()
    said = [(record.levelname, record.getMessage().split(" (")[0]) for record in caplog.records]
    assert said == [
        ("WARNING", "The broker refused to pop more messages from test.broker.refused"),
        ("INFO", "The broker pops several messages from test.broker.refused again"),
        ("WARNING", "The broker refused to pop more messages from test.broker.refused"),
    ]
