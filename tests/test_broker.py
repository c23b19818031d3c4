"""The Redis transport (cs_portal/broker.py) against the real test Redis: one client per channel
and pool, shared by threads, and messages through it arrive whole."""

import threading

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
