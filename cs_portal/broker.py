"""The Redis broker transport: kombu's own, with one Redis client per channel instead of one
per command.

kombu's Redis channel builds a new ``redis.Redis`` object for every publish, acknowledgement,
unacked-index write and event it sends (``Channel.conn_or_acquire``). Building one fills its
table of about 170 response callbacks, which here cost more CPU than the command it carries:
three to four of them per translation job, on the worker's consumer thread and in the portal.
A ``redis.Redis`` object holds no connection of its own (each command takes one from the
channel's pool and gives it back), and redis-py documents it as safe to share between threads,
so one per channel and pool does the same work. Everything else is kombu's.

``register()`` (called where the Celery app is made) names it as the transport of ``redis://``
and ``rediss://`` URLs in kombu's table of aliases, so URLs keep their scheme everywhere they are
shown or parsed (Flower reads the broker's kind from it). Other brokers are not touched.
"""

from __future__ import annotations

import threading

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client = None
    _shared_client_lock = threading.Lock()

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


class Transport(kombu_redis.Transport):
    Channel = Channel


def register() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs resolve to this transport (before any
    connection is made: kombu caches what a name resolved to)."""
    for scheme in ("redis", "rediss"):
        kombu_transports.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
