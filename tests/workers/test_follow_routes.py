"""A worker started with "all" follows the routes: the queue follower on the real routing table,
with a stand-in for Celery's consumer (its two calls); tests/integration/test_routing_live.py
runs it in a real worker."""

import pytest

from tests.conftest import route_update
from translation.routing import routes
from workers.follow_routes import QueueFollower


class ConsumerStandIn:
    """Celery's consumer as the follower uses it: ``call_soon`` from any thread (its loop runs
    the callback later: ``turn``), ``add_task_queue`` on its own thread, ``task_consumer`` None
    once it stopped."""

    def __init__(self) -> None:
        self.soon: list = []
        self.added: list[str] = []
        self.task_consumer = object()

    def call_soon(self, callback, *args):
        self.soon.append((callback, args))

    def turn(self) -> None:
        soon, self.soon = self.soon, []
        for callback, args in soon:
            callback(*args)

    def add_task_queue(self, queue):
        self.added.append(queue)


@pytest.mark.django_db
class QueueFollowerTests:
    @pytest.fixture
    def follower(self):
        self.told: list[list[str]] = []
        return QueueFollower(sorted({route.queue for route in routes() if route.enabled}),
                             on_added=self.told.append, every_s=1)

    def test_a_queue_routed_later_is_handed_to_the_consumer_once(self, follower):
        consumer = ConsumerStandIn()
        follower.attach(consumer)
        assert follower.check() == []
        route_update("es", "en", queue="translate.en.later")
        assert follower.check() == ["translate.en.later"]
        assert follower.check() == []
        consumer.turn()
        assert consumer.added == ["translate.en.later"]
        assert "translate.en.later" in follower.queues
        assert self.told == [follower.queues]

    def test_a_queue_the_consumer_could_not_take_is_tried_again(self, follower):
        stopped = ConsumerStandIn()
        follower.attach(stopped)
        route_update("es", "en", queue="translate.en.later")
        assert follower.check() == ["translate.en.later"]
        stopped.task_consumer = None  # it stopped before its loop ran the call
        stopped.turn()  # no error escapes into the consumer's loop
        assert stopped.added == []
        assert "translate.en.later" not in follower.queues
        running = ConsumerStandIn()
        follower.attach(running)
        assert follower.check() == ["translate.en.later"]
        running.turn()
        assert running.added == ["translate.en.later"]

    def test_nothing_is_followed_until_the_consumer_runs(self, follower):
        route_update("es", "en", queue="translate.en.later")
        assert follower.check() == []
        consumer = ConsumerStandIn()
        follower.attach(consumer)
        assert follower.check() == ["translate.en.later"]

    def test_a_disabled_route_is_not_followed(self, follower):
        follower.attach(ConsumerStandIn())
        route_update("es", "en", queue="translate.en.off", enabled=False)
        assert follower.check() == []

    def test_a_restarted_consumer_consumes_the_followed_queues_again(self, follower):
        follower.attach(ConsumerStandIn())
        route_update("es", "en", queue="translate.en.later")
        follower.check()
        follower.detach()  # the broker connection was lost; Celery starts a new consumer
        again = ConsumerStandIn()
        follower.attach(again)
        assert again.added == ["translate.en.later"]
