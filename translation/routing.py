"""Which queue, engine, model and knobs serve a language pair: the LanguageRoute table.

Everything that decides a route goes through ``route_for``. Each process keeps the table in
memory as immutable ``Route`` snapshots and checks at most every ``TRANSLATION_ROUTES_CHECK_S``
seconds (default 0.5) whether it changed: a change anywhere (the admin, a command, another
process) is followed within that time, and a save in this process at once. The check reads one
number, ``RouteTableVersion``, which every change to a route bumps in its own transaction: a
change is seen once it is committed, whatever the order of commits or the clocks of the hosts.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings

from translation import errors
from translation.models import (
    ANY_LANGUAGE,
    ENGINES,
    PRECISIONS,
    QUEUE_PATTERN,
    LanguageRoute,
    RouteTableVersion,
    fallback_serves,
    queue_name,
)

ANY = ANY_LANGUAGE
__all__ = [
    "ANY", "ENGINES", "PRECISIONS", "QUEUE_PATTERN", "Route", "RoutingTable", "pinned_route", "queue_name", "route_by_id",
    "route_for", "routes", "routes_changed", "routes_for_queues", "share_problems",
]

ROUTE_DISABLED = "Route {route} is disabled and no enabled fallback follows it."


@dataclass(frozen=True)
class Route:
    """A route as one process sees it: a snapshot of a LanguageRoute row."""

    source: str  # ISO 639-1, or ANY
    target: str
    queue: str
    engine: str
    model: str  # local path or hub id, given to from_pretrained
    precision: str = "fp32"
    id: int | None = None
    variant: str = ""
    traffic_share: int = 100
    adapter: str = ""
    max_batch_size: int = 128
    max_wait_ms: int = 5
    max_input_chars: int = 5000
    enabled: bool = True
    fallback_id: int | None = None
    max_queued: int = 10_000

    @classmethod
    def of(cls, row: LanguageRoute) -> Route:
        return cls(
            source=row.source_language, target=row.target_language, queue=row.queue or queue_name(row.target_language),
            engine=row.engine, model=row.model_name, precision=row.precision, id=row.pk, variant=row.variant,
            traffic_share=row.traffic_share, adapter=row.adapter, max_batch_size=row.max_batch_size,
            max_wait_ms=row.max_wait_ms, max_input_chars=row.max_input_chars, enabled=row.enabled,
            fallback_id=row.fallback_id, max_queued=row.max_queued,
        )

    def __str__(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.source}→{self.target}{variant} (#{self.id})"


class RoutingTable:
    """The routes, indexed by pair; pure logic, no database."""

    def __init__(self, rows: Iterable[Route], fingerprint: tuple = ()) -> None:
        self.routes = tuple(rows)
        self.fingerprint = fingerprint
        self.by_id = {route.id: route for route in self.routes}
        self.by_pair: dict[tuple[str, str], list[Route]] = {}
        for route in sorted(self.routes, key=lambda r: (r.variant, r.id or 0)):
            self.by_pair.setdefault((route.source, route.target), []).append(route)

    def choose(self, source: str, target: str, sticky_key: object = None) -> Route:
        """The route for a pair: an exact source wins over ANY; among enabled A/B variants the
        one whose share holds this key's bucket; a pair with only disabled routes follows
        their fallback. Raises NoRoute with the reason."""
        disabled_reason = ""
        for candidate_source in (source, ANY):
            candidates = self.by_pair.get((candidate_source, target), [])
            enabled = [route for route in candidates if route.enabled]
            if enabled:
                return self._variant(enabled, sticky_key)
            for route in candidates:
                fallback = self._enabled_fallback(route)
                if fallback is not None:
                    return fallback
                disabled_reason = disabled_reason or ROUTE_DISABLED.format(route=route)
        raise errors.NoRoute(disabled_reason or errors.NO_ROUTE.format(source=source, target=target))

    def _enabled_fallback(self, route: Route) -> Route | None:
        origin = route
        for _ in range(len(self.routes)):  # bounded: the admin forbids cycles, this survives one
            if route.fallback_id is None or route.fallback_id not in self.by_id:
                return None
            route = self.by_id[route.fallback_id]
            if not fallback_serves(route, origin):  # never hand a pair to a model made for another
                return None
            if route.enabled:
                return route
        return None

    @staticmethod
    def _variant(enabled: list[Route], sticky_key: object) -> Route:
        if len(enabled) == 1:
            return enabled[0]
        if sticky_key is None:
            bucket = random.randrange(100)
        else:
            # The same conversation always lands in the same bucket; the pair is mixed in so two
            # A/B tests on different pairs split conversations independently.
            seed = f"{sticky_key}|{enabled[0].source}|{enabled[0].target}".encode()
            bucket = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") % 100
        boundary = 0
        for route in enabled:
            boundary += route.traffic_share
            if bucket < boundary:
                return route
        return enabled[-1]  # shares short of 100 (never saved so by the admin): the last takes the rest


_lock = threading.Lock()
_table: RoutingTable | None = None
_checked_at = 0.0


def _fingerprint() -> tuple:
    return (RouteTableVersion.objects.filter(pk=1).values_list("version", flat=True).first(),)


def current_table() -> RoutingTable:
    """This process's table, reloaded when the database's has changed (checked at most every
    ``TRANSLATION_ROUTES_CHECK_S``)."""
    global _table, _checked_at
    now = time.monotonic()
    table = _table
    if table is not None and now - _checked_at < settings.TRANSLATION_ROUTES_CHECK_S:
        return table
    with _lock:
        if _table is not None and time.monotonic() - _checked_at < settings.TRANSLATION_ROUTES_CHECK_S:
            return _table  # another thread checked while this one waited
        fingerprint = _fingerprint()  # read before the rows: a change committed between is seen next time
        if _table is None or _table.fingerprint != fingerprint:
            rows = LanguageRoute.objects.order_by("id")
            _table = RoutingTable((Route.of(row) for row in rows), fingerprint)
        _checked_at = time.monotonic()
        return _table


def routes_changed(**kwargs) -> None:
    """Forget this process's table (connected to the route model's save and delete)."""
    global _table
    with _lock:
        _table = None


def route_saved(**kwargs) -> None:
    """A route was saved or deleted: bump the version (in the same transaction) for every other
    process, and forget this process's table."""
    RouteTableVersion.bump()
    routes_changed()


_pinned = threading.local()


@contextmanager
def pinned_route(route: Route):
    """In this block, and in this thread only, jobs of ``route``'s pair take ``route`` whatever
    the table says (the benchmark's own disabled route: real traffic never sees it)."""
    previous = getattr(_pinned, "route", None)
    _pinned.route = route
    try:
        yield route
    finally:
        _pinned.route = previous


def route_for(source: str, target: str, *, sticky_key: object = None) -> Route:
    pinned = getattr(_pinned, "route", None)
    if pinned is not None and pinned.target == target and pinned.source in (source, ANY):
        return pinned
    return current_table().choose(source, target, sticky_key)


def route_by_id(route_id: int | None) -> Route | None:
    return current_table().by_id.get(route_id)


def routes() -> tuple[Route, ...]:
    return current_table().routes


def routes_for_queues(queues: set[str], *, include_disabled: bool = False) -> list[Route]:
    """The enabled routes a worker consuming ``queues`` serves (and the disabled ones, which an
    admin may switch on at any moment, with ``include_disabled``)."""
    return [route for route in routes() if route.queue in queues and (route.enabled or include_disabled)]


def share_problems(rows: Iterable[LanguageRoute]) -> list[str]:
    """Pairs whose enabled routes' traffic shares do not add up to 100, as messages."""
    totals: dict[tuple[str, str], list[LanguageRoute]] = {}
    for row in rows:
        if row.enabled:
            totals.setdefault((row.source_language, row.target_language), []).append(row)
    problems = []
    for (source, target), pair in sorted(totals.items()):
        total = sum(row.traffic_share for row in pair)
        if total != 100:
            parts = ", ".join(f"{row.variant or '(no variant)'} {row.traffic_share}%" for row in pair)
            problems.append(
                f"Traffic shares of the enabled routes for {source}→{target} add up to {total}% ({parts}); "
                "they must add up to 100%."
            )
    return problems
