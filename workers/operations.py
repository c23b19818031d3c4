"""The admin's operations page, for a deployment without Grafana: per-route latency and
throughput over the last hour from the ledger, queue depths, and every worker's heartbeat."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

MINUTES = 60
# The page reads at most this many finished jobs of the hour (the newest); beyond it the
# charts show a sample and say so. Grafana and Prometheus are the tools at that scale.
ROW_LIMIT = 100_000


@dataclass
class Sparkline:
    """A small SVG line chart: one path, gaps where a minute has no value."""

    values: list[float | None]
    width: int = 240
    height: int = 36

    @property
    def top(self) -> float:
        return max((v for v in self.values if v is not None), default=0.0)

    @property
    def path(self) -> str:
        """An SVG path: a run of minutes with values is a line; a lone minute, a short dash."""
        top = self.top or 1.0
        step = self.width / max(1, len(self.values) - 1)
        runs: list[list[str]] = [[]]
        for index, value in enumerate(self.values):
            if value is None:
                runs.append([])
                continue
            runs[-1].append(f"{index * step:.1f},{self.height - 2 - (value / top) * (self.height - 4):.1f}")
        commands = []
        for run in (run for run in runs if run):
            commands.append("M" + run[0] + ("".join(" L" + point for point in run[1:]) if len(run) > 1 else " h2"))
        return " ".join(commands)


@dataclass
class RouteActivity:
    route: object  # LanguageRoute
    jobs: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    per_minute: list[list[float]] = field(default_factory=lambda: [[] for _ in range(MINUTES)])

    def _percentile(self, values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    @property
    def p50_ms(self) -> float | None:
        return self._percentile(self.latencies_ms, 0.50)

    @property
    def p95_ms(self) -> float | None:
        return self._percentile(self.latencies_ms, 0.95)

    @property
    def throughput(self) -> Sparkline:
        """Translations stored per minute."""
        return Sparkline([float(len(minute)) for minute in self.per_minute])

    @property
    def p50_line(self) -> Sparkline:
        return Sparkline([self._percentile(minute, 0.50) for minute in self.per_minute])

    @property
    def p95_line(self) -> Sparkline:
        return Sparkline([self._percentile(minute, 0.95) for minute in self.per_minute])


def route_activity(now: datetime | None = None) -> tuple[list[RouteActivity], bool]:
    """Every route with its last hour, and whether the row limit cut the hour short."""
    from translation.models import LanguageRoute, Translation, TranslationStatus

    now = now or timezone.now()
    since = now - timedelta(minutes=MINUTES)
    activity = {route.pk: RouteActivity(route) for route in LanguageRoute.objects.order_by("target_language", "source_language", "variant")}
    # Samples sent from the route admin are not customers' traffic.
    recent = Translation.objects.filter(finished_at__gte=since, route__isnull=False).exclude(
        message__isnull=True, back_translation_of__isnull=True
    )
    rows = list(
        recent.filter(status=TranslationStatus.DONE)
        .order_by("-finished_at")
        .values_list("route_id", "created_at", "finished_at")[:ROW_LIMIT]
    )
    for route_id, created_at, finished_at in rows:
        entry = activity.get(route_id)
        if entry is None:
            continue
        latency = (finished_at - created_at).total_seconds() * 1000
        minute = min(MINUTES - 1, int((finished_at - since).total_seconds() // 60))
        entry.jobs += 1
        entry.latencies_ms.append(latency)
        entry.per_minute[minute].append(latency)
    for route_id, failed in recent.filter(status=TranslationStatus.FAILED).values_list("route_id").annotate(n=Count("id")):
        if route_id in activity:
            activity[route_id].failed = failed
    return list(activity.values()), len(rows) >= ROW_LIMIT


@dataclass
class QueueState:
    name: str
    depth: int | None
    consumers: list[str]
    queued: int
    running: int
    oldest_s: float | None


def queue_states(beats, now: datetime | None = None) -> list[QueueState]:
    from translation.models import Translation, TranslationStatus
    from translation.queues import queue_depths
    from translation.routing import routes

    now = now or timezone.now()
    ledger = {
        row["queue"]: row
        for row in Translation.objects.filter(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
        .exclude(queue="")
        .values("queue")
        .annotate(
            queued=Count("id", filter=Q(status=TranslationStatus.QUEUED)),
            running=Count("id", filter=Q(status=TranslationStatus.RUNNING)),
            oldest=Min("created_at"),
        )
    }
    names = sorted(
        {route.queue for route in routes() if route.enabled} | {q for beat in beats for q in beat.queues} | set(ledger)
    )
    depths = queue_depths(names)
    states = []
    for name in names:
        row = ledger.get(name, {})
        oldest = row.get("oldest")
        states.append(
            QueueState(
                name=name, depth=depths.get(name),
                consumers=[beat.name for beat in beats if name in beat.queues and beat.is_ready(now)],
                queued=row.get("queued", 0), running=row.get("running", 0),
                oldest_s=(now - oldest).total_seconds() if oldest else None,
            )
        )
    return states


def operations_snapshot() -> dict:
    """Everything the page shows, read once."""
    from workers.models import WorkerHeartbeat

    now = timezone.now()
    beats = list(WorkerHeartbeat.objects.all())
    live = [beat for beat in beats if beat.stopped_at is None]
    routes, truncated = route_activity(now)
    workers = [
        {
            "beat": beat, "alive": beat.is_alive(now), "ready": beat.is_ready(now),
            "age_s": (now - beat.beat_at).total_seconds(),
            "busy_s": (now - beat.busy_since).total_seconds() if beat.busy_since else None,
        }
        for beat in beats
    ]
    return {
        "now": now, "routes": routes, "truncated": truncated, "row_limit": ROW_LIMIT, "minutes": MINUTES,
        "queues": queue_states(live, now), "workers": workers,
    }
