"""Backpressure: a route takes at most ``max_queued`` waiting jobs. Past it, its fallback takes
the job if it has room, else the request fails with ``Overloaded`` (HTTP 429 with Retry-After)
and, the caller's transaction rolling back, nothing of it is stored.

Counting a route's waiting jobs costs one indexed COUNT (a partial index of queued rows). Far
from the limit each process reuses its count for ``CACHE_S``, adding the jobs it sent since;
near the limit it counts every time. Requests in flight at the same moment do not see each
other's uncommitted jobs, so a burst may pass the limit by a few: it is a bound on the backlog,
not an exact quota.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta

from django.utils import timezone

from translation import errors
from translation.models import Translation, TranslationStatus

CACHE_S = 0.5
NEAR_LIMIT = 0.9

_lock = threading.Lock()
_counts: dict[int, tuple[float, int]] = {}  # route id -> (monotonic time counted, jobs waiting)


def waiting(route, *, exact: bool = False) -> int:
    now = time.monotonic()
    with _lock:
        at, count = _counts.get(route.id, (0.0, -1))
    if exact or count < 0 or now - at > CACHE_S or count >= NEAR_LIMIT * route.max_queued:
        count = Translation.objects.filter(route_id=route.id, status=TranslationStatus.QUEUED).count()
        with _lock:
            _counts[route.id] = (now, count)
    return count


def forget() -> None:
    """Drop this process's counts (they are read again at the next request)."""
    with _lock:
        _counts.clear()


def taken(route) -> None:
    """One more job waits on ``route`` (sent by this process)."""
    with _lock:
        at, count = _counts.get(route.id, (0.0, -1))
        if count >= 0:
            _counts[route.id] = (at, count + 1)


def retry_after_s(route, queued: int) -> int:
    """Time for the route to work off a tenth of its limit at its pace of the last minute."""
    since = timezone.now() - timedelta(minutes=1)
    done = Translation.objects.filter(route_id=route.id, status=TranslationStatus.DONE, finished_at__gte=since).count()
    if not done:
        return 30
    return max(1, min(60, math.ceil(0.1 * route.max_queued / (done / 60))))


def route_with_room(route):
    """``route``, or the first fallback with room; raises Overloaded when none has any."""
    from translation.models import fallback_serves
    from translation.routing import route_by_id

    if route.id is None:  # a route pinned in memory (the benchmark): no ledger to count
        return route
    candidate, seen = route, set()
    while candidate is not None and candidate.id not in seen:
        seen.add(candidate.id)
        if candidate.enabled or candidate is route:
            if waiting(candidate) < candidate.max_queued:
                taken(candidate)
                return candidate
        following = route_by_id(candidate.fallback_id) if candidate.fallback_id else None
        candidate = following if following is not None and fallback_serves(following, route) else None
    from translation import metrics

    queued = waiting(route, exact=True)
    seconds = retry_after_s(route, queued)
    metrics.jobs_refused.labels(route=str(route.id), target=route.target).inc()
    raise errors.Overloaded(
        errors.OVERLOADED.format(target=route.target, queued=queued, route=route, limit=route.max_queued, retry_after=seconds),
        retry_after=seconds,
    )
