"""What the workers and the broker say about the translation queues: who consumes each one,
and how many messages wait in it. For the admin's views; cached briefly, because asking every
worker costs up to ``INSPECT_TIMEOUT_S``."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0
CACHE_S = 5.0

_lock = threading.Lock()
_cached: tuple[float, dict[str, list[str]] | None] = (0.0, None)


def queue_consumers(*, fresh: bool = False) -> dict[str, list[str]] | None:
    """Queue name -> the workers consuming it now (from every worker's reply to
    ``active_queues``), or None when the broker cannot be reached (nothing can be said)."""
    global _cached
    with _lock:
        at, consumers = _cached
        if not fresh and consumers is not None and time.monotonic() - at < CACHE_S:
            return consumers
    from cs_portal.celery import app

    try:
        replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    except Exception:  # the broker is down: unknown, not "nobody"
        logger.warning("Could not ask the workers which queues they consume", exc_info=True)
        return None
    consumers = {}
    for worker, queues in replies.items():
        for queue in queues or []:
            consumers.setdefault(queue["name"], []).append(worker)
    with _lock:
        _cached = (time.monotonic(), consumers)
    return consumers


def forget_consumers() -> None:
    global _cached
    with _lock:
        _cached = (0.0, None)


def queue_depths(names: list[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, as the broker counts them (None where it cannot say)."""
    from cs_portal.celery import app

    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            for name in names:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[name] = 0
    except Exception as exc:  # one line (a scrape or `status` with the broker away), the traceback at DEBUG
        logger.warning("Could not read queue depths from the broker: %s: %s", type(exc).__name__, exc)
        logger.debug("Reading queue depths failed", exc_info=True)
    return depths


ARGS_ID = re.compile(r"^\W*(\d+)")


def _translation_id(raw) -> int | None:
    """The Translation id a Celery message carries, from its headers' ``argsrepr`` ("[123]")."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an entry of the unacked hash: [message, exchange, routing key]
            message = message[0]
        match = ARGS_ID.match(message.get("headers", {}).get("argsrepr") or "")
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    return int(match.group(1)) if match else None


def translation_ids_waiting(queues: list[str]) -> set[int] | None:
    """Ids of the translations waiting in ``queues`` (not yet taken by a worker); None where the
    broker cannot be searched."""
    search = _translation_ids(queues, unacked=False)
    return search.ids if search is not None else None


def translation_ids_in_broker(queues: list[str], *, delivered_within_s: float | None = None) -> set[int] | None:
    """Ids of the translations whose message the broker holds: waiting in one of ``queues``, or
    delivered to a worker and not yet acknowledged (with ``delivered_within_s``: only those
    delivered that recently; a live worker claims what it took within a batch or two). None
    where the broker cannot be searched (a transport other than Redis, or unreachable): then
    nothing can be called lost."""
    search = broker_search(queues, delivered_within_s=delivered_within_s)
    return search.ids if search is not None else None


@dataclass
class BrokerSearch:
    ids: set  # the translations whose message was read: held by the broker (None: not a job's, until tidy)
    read_whole: set[str]  # the queues read to their other end: every job of theirs they held is in ids

    def tidy(self) -> BrokerSearch:
        self.ids.discard(None)  # messages that are not a translation job's
        return self


def broker_search(
    queues: list[str], *, delivered_within_s: float | None = None, wanted: dict[str, set[int]] | None = None
) -> BrokerSearch | None:
    """``translation_ids_in_broker``, which can stop early: with ``wanted`` (ids by the queue they
    were sent to), a queue is read only until every id wanted of it is found (among the messages
    delivered and not acknowledged, read first and, if an id is still missing, again last, or in
    the queue). Each queue is read from the end workers take from, its oldest messages first, a
    chunk per round trip; ``read_whole`` names those read to their other end."""
    return _translation_ids(queues, unacked=True, delivered_within_s=delivered_within_s, wanted=wanted)


# Messages read per round trip when a queue is searched for given jobs (``wanted``), and how much
# each read overlaps the one before: workers popping messages meanwhile move the rest towards the
# end being read, up to that many between two reads (a chunk's decoding, about 8 ms) without one
# being skipped. (One skipped would only be a suspect: a job is sent again when two looks in a
# row missed it.)
SEARCH_CHUNK = 500
SEARCH_OVERLAP = 100


def _read_list(client, key: str, start: int, end: int) -> list:
    return client.execute_command("LRANGE", key, start, end)


def _translation_ids(
    queues: list[str], *, unacked: bool, delivered_within_s: float | None = None,
    wanted: dict[str, set[int]] | None = None,
) -> BrokerSearch | None:
    from cs_portal.celery import app

    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            if connection.transport.driver_type != "redis":
                return None
            channel = connection.default_channel
            client = channel.client
            # kombu's client prefixes only the commands it uses itself; LRANGE and HVALS are
            # not among them, so the installation's key prefix is added here.
            prefix = getattr(client, "global_keyprefix", "") or ""
            search, step = BrokerSearch(set(), set()), max(1, SEARCH_CHUNK - SEARCH_OVERLAP)

            def take(raws) -> set:
                ids = {_translation_id(raw) for raw in raws if raw is not None}
                search.ids.update(ids)
                return ids

            def take_unacked() -> None:
                if delivered_within_s is None:
                    take(client.execute_command("HVALS", prefix + channel.unacked_key))
                    return
                since = time.time() - delivered_within_s  # the unacked index scores each delivery with its time
                tags = client.execute_command("ZRANGEBYSCORE", prefix + channel.unacked_index_key, since, "+inf")
                if tags:
                    take(client.execute_command("HMGET", prefix + channel.unacked_key, *tags))

            if unacked and wanted is not None:
                # First: a few batches per worker, and what the queues need not be searched for.
                take_unacked()
            unfound = False
            for queue in queues:
                left = None if wanted is None else wanted.get(queue, set()) - search.ids  # not found yet
                whole = True
                for priority in channel.priority_steps:  # one list per priority step
                    key = prefix + channel._q_for_pri(queue, priority)
                    if left is None:  # everything: one read
                        take(_read_list(client, key, 0, -1))
                        continue
                    if not left:
                        whole = False
                        break
                    # Workers pop from the list's right end (kombu's BRPOP): the oldest messages
                    # are there, and a look searches for its queues' oldest jobs.
                    end = -1
                    while True:
                        chunk = _read_list(client, key, end - SEARCH_CHUNK + 1, end)
                        left -= take(chunk)
                        if len(chunk) < SEARCH_CHUNK:  # this list read to its other end
                            break
                        if not left:
                            whole = False
                            break
                        end -= step
                    if not whole:
                        break
                if whole:
                    search.read_whole.add(queue)
                unfound = unfound or bool(left)
            if unacked and (wanted is None or unfound):
                # Workers move messages from the queues to the unacknowledged ones: one taken
                # after the first read of those (or, reading everything, after none) and before
                # its queue's read is there now.
                take_unacked()
            return search.tidy()
    except Exception:
        logger.warning("Could not read the broker's queues", exc_info=True)
        return None
