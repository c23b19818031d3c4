"""The Redis broker transport: kombu's own, with fewer round trips to Redis per message.

Three changes, everything else is kombu's:

- **One Redis client per channel** instead of one per command. kombu's Redis channel builds a new
  ``redis.Redis`` object for every publish, acknowledgement, unacked-index write and event it
  sends (``Channel.conn_or_acquire``). Building one fills its table of about 170 response
  callbacks, which here cost more CPU than the command it carries. A ``redis.Redis`` object holds
  no connection of its own (each command takes one from the channel's pool and gives it back),
  and redis-py documents it as safe to share between threads, so one per channel and pool does
  the same work.
- **Several messages per wake-up.** kombu's consumer takes one message per ``BRPOP`` and then
  writes it to the unacked index in a second round trip. When ``BRPOP`` answers, this channel
  also pops up to ``MORE_PER_WAKE`` (31) more of the same queue (``RPOP key count``, as far as
  the prefetch limit leaves room) and indexes them all in one pipeline before handing any to
  the consumer. Under load that is two round trips for 32 messages instead of two per message.
  Messages that cannot be indexed (the broker refuses the write, out of memory say) are pushed
  back where they were. Messages popped but not yet indexed are lost if the process dies in
  that moment, as kombu's own message between its ``BRPOP`` and its index write is, only up to
  32 of them: their ledger rows stay queued and the reconciler sends them again
  (``translation.recovery``).
- **Acknowledgements share a round trip.** A batch's results are stored together, so its jobs
  are acknowledged together: Celery's worker acknowledges each job from its event loop, one
  callback per job, and the loop then sends all of that turn's acknowledgements in one pipeline
  before it polls again (``hub.on_tick``). An acknowledgement from another thread (a consumer
  without an event loop) joins a list that one thread at a time sends while the others wait
  for it, so such an ``ack`` returns only once its message is off the index. An acknowledgement
  that never reaches Redis (the process died, the broker went away) leaves its message in the
  unacked index: Redis redelivers it after the visibility timeout, and the ledger skips a job
  already stored.

``register()`` (called where the Celery app is made) names it as the transport of ``redis://``
and ``rediss://`` URLs in kombu's table of aliases, so URLs keep their scheme everywhere they are
shown or parsed (Flower reads the broker's kind from it). Other brokers are not touched.
"""

from __future__ import annotations

import logging
import threading
from time import time

from redis import exceptions as redis_errors

from kombu import transport as kombu_transports
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# The most messages taken beyond the one BRPOP delivered, per wake-up. Round trips fall 16-fold
# already, and a burst still spreads over the workers that consume one queue (each wake-up of
# each takes 32 at most), where a full batch per wake-up would hand a burst of 120 to one worker
# while another idles. The consumer wakes again at once while messages wait, so batches of 128
# still form within the batcher's wait. The prefetch limit (Celery's) caps it further.
MORE_PER_WAKE = 31


class QoS(kombu_redis.QoS):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._acks: list = []
        self._acks_lock = threading.Lock()  # guards the list
        self._acks_sending = threading.Lock()  # one round trip at a time
        self._acks_failing = False  # the last tick's send failed (logged once per outage)
        self._closed = False

    def ack(self, delivery_tag):
        with self._acks_lock:
            self._acks.append(delivery_tag)
        hub = get_event_loop()
        if hub is not None and hub._loop_thread == threading.get_ident() and not self._closed:
            # Celery acknowledges from its event loop, one callback per job: the loop sends them
            # all once it has run this turn's callbacks (on_tick runs before it polls again).
            if self._acks_on_tick not in hub.on_tick:
                hub.on_tick.add(self._acks_on_tick)
        else:
            self._send_acks()
        virtual.QoS.ack(self, delivery_tag)

    def _send_acks(self) -> None:
        """Remove every listed acknowledgement from the unacked index, in one round trip."""
        with self._acks_sending:
            with self._acks_lock:
                tags, self._acks = self._acks, []
            if not tags:  # a thread before this one sent them with its own
                return
            try:
                with self.pipe_or_acquire() as pipe:
                    pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
            except Exception:
                with self._acks_lock:  # sent with the next that gets through
                    self._acks[:0] = tags
                raise

    def _acks_on_tick(self) -> None:
        try:
            self._send_acks()
            self._acks_failing = False
        except Exception:  # as Celery's own failed acknowledgement: logged, the loop goes on
            # Kept for the next tick. Until one gets through they stay in the unacked index; if
            # none does, Redis redelivers them after the visibility timeout and the ledger skips
            # jobs already stored.
            if not self._acks_failing:
                logger.warning("Could not acknowledge messages; trying again", exc_info=True)
            self._acks_failing = True

    def restore_unacked_once(self, stderr=None):
        self._closed = True  # acknowledgements after this are sent at once, not on a tick
        try:  # acknowledgements still listed go out before the channel closes
            self._send_acks()
        except Exception:
            logger.warning("Could not acknowledge messages at close", exc_info=True)
        hub = get_event_loop()
        if hub is not None:
            hub.on_tick.discard(self._acks_on_tick)
        return super().restore_unacked_once(stderr)

    def index(self, messages, raws: list[str] | None = None) -> None:
        """Write ``messages`` (just popped) to the unacked index in one round trip, as ``append``
        does one at a time. ``raws``: each message's JSON as it was popped, written as it is
        instead of encoding the message again (about an eighth of the consumer's time per message in a
        profile of a burst)."""
        stamp = time()
        if raws is None:
            raws = [dumps(message._raw) for message in messages]
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {message.delivery_tag: stamp for message in messages})
            pipe.hset(self.unacked_key, mapping={
                message.delivery_tag: (
                    f"[{raw}, {dumps(message.delivery_info['exchange'])}, {dumps(message.delivery_info['routing_key'])}]"
                )
                for message, raw in zip(messages, raws, strict=True)
            })
            pipe.execute()


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client = None
    _shared_client_lock = threading.Lock()
    _pop_many = True  # False once the server refused RPOP with a count (Redis before 6.2)
    _pop_refused = False  # the server refused a pop for another reason, said once per refusal spell

    def __init__(self, *args, **kwargs):
        self._acked_queues: set[str] = set()  # consumed with acknowledgements: indexed when popped
        super().__init__(*args, **kwargs)

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:  # the channel's own blocking BRPOP/LISTEN connection: kombu's as it is
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        # The pool is replaced when the channel reconnects: a client of the old one is dropped.
        if client is None or client.connection_pool is not self.pool:
            with self._shared_client_lock:
                client = self._shared_client
                if client is None or client.connection_pool is not self.pool:
                    client = self._shared_client = super()._create_client()
        return client

    def _brpop_read(self, **options):
        """kombu's, and then more of the same queue's messages (``_deliver_more``)."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next iteration reconnects
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            key, item = dest__item
            key = bytes_to_str(key)
            dest = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(loads(bytes_to_str(item)), dest)
        finally:
            self._in_poll = None
            # The BRPOP connection is idle now: the moment kombu flushes a pending re-auth token.
            self._flush_brpop_reauth()
        self._deliver_more(key, dest)
        return True

    def _deliver_more(self, key: str, dest: str) -> None:
        """Pop up to ``MORE_PER_WAKE`` more messages from ``key`` (the list BRPOP answered from),
        index them in one round trip, then hand them to the consumer one by one."""
        if not self._pop_many or not isinstance(self.qos, QoS) or dest not in self._acked_queues \
                or dest not in self.connection._callbacks:
            return
        if "can_consume" in vars(self.qos):  # Celery's worker_disable_prefetch replaced it: one at a time
            return
        room = self.qos.can_consume_max_estimate()
        count = MORE_PER_WAKE if room is None else min(room, MORE_PER_WAKE)
        if count <= 0:
            return
        with self.conn_or_acquire() as client:
            try:
                items = client.rpop(key, count)
            except kombu_redis.get_redis_error_classes().connection_errors:
                return  # the next BRPOP finds the broker gone and kombu reconnects
            except redis_errors.ResponseError as exc:
                if "wrong number of arguments" in str(exc).lower():  # RPOP without a count (Redis < 6.2)
                    logger.warning("The broker cannot pop several messages at once (%s); taking one per wake-up", exc)
                    Channel._pop_many = False
                elif not self._pop_refused:  # said once until a pop succeeds again
                    logger.warning("The broker refused to pop more messages from %s (%s); one per wake-up "
                                   "until it takes the pop again", dest, exc)
                    self._pop_refused = True
                return  # another refusal (a replica in a failover, say): the next wake-up tries again
        if self._pop_refused:
            logger.info("The broker pops several messages from %s again", dest)
            self._pop_refused = False
        if not items:
            return
        raws = [bytes_to_str(item) for item in items]
        messages = [self.Message(loads(raw), channel=self) for raw in raws]
        try:
            self.qos.index(messages, raws)
        except Exception:
            self._push_back(key, items)
            return
        deliver, failed = self.connection._callbacks[dest], None
        for message in messages:  # each one, even after one fails: all are indexed
            try:
                deliver(message, indexed=True)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _push_back(self, key: str, items: list) -> None:
        """Messages popped that could not be indexed go back to the end they came from, oldest
        last in, as they were. If that fails too they are lost to the broker; their ledger rows
        stay queued, and the reconciler sends them again."""
        logger.warning("Could not index %d messages taken from %s; putting them back", len(items), key, exc_info=True)
        try:
            with self.conn_or_acquire() as client:
                client.rpush(key, *reversed(items))
        except Exception:
            logger.error("Could not put back %d messages taken from %s: the reconciler sends their jobs again",
                         len(items), key, exc_info=True)

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        """kombu's, with a way for ``_deliver_more`` to hand over a message already indexed."""
        ret = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:  # nothing to index: its messages are taken one per BRPOP, as kombu does
            self._acked_queues.discard(queue)
        else:
            self._acked_queues.add(queue)
        qos_append = virtual.QoS.append

        def _callback(raw_message, indexed=False):
            message = raw_message if indexed else self.Message(raw_message, channel=self)
            if not no_ack:
                if indexed:
                    qos_append(self.qos, message, message.delivery_tag)  # the bookkeeping only
                else:
                    self.qos.append(message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = _callback
        return ret


class Transport(kombu_redis.Transport):
    Channel = Channel


def register() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs resolve to this transport (before any
    connection is made: kombu caches what a name resolved to)."""
    for scheme in ("redis", "rediss"):
        kombu_transports.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
