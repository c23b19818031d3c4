"""The admin's operations page, for a deployment without Grafana: per-route latency and
throughput over the last hour from the ledger, queue depths, and every worker's heartbeat."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

MINUTES = 60
# Where the database cannot compute the figures itself (SQLite), the page reads at most this many
# finished jobs of the hour (the newest); beyond it the charts show a sample and say so.
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


def nearest_rank(values: list[float], q: float) -> float | None:
    """The ``q`` percentile by nearest rank: the value with ``ceil(q * n)`` values at or below it
    (PostgreSQL's ``percentile_disc``)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Figures:
    """Jobs stored, with their latency's p50 and p95 (ms): of an hour, or of one of its minutes."""

    jobs: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None

    @classmethod
    def of(cls, latencies_ms: list[float]) -> Figures:
        return cls(len(latencies_ms), nearest_rank(latencies_ms, 0.50), nearest_rank(latencies_ms, 0.95))


@dataclass
class RouteActivity:
    route: object  # LanguageRoute
    hour: Figures = field(default_factory=Figures)
    per_minute: list[Figures] = field(default_factory=lambda: [Figures() for _ in range(MINUTES)])
    failed: int = 0

    @property
    def jobs(self) -> int:
        return self.hour.jobs

    @property
    def p50_ms(self) -> float | None:
        return self.hour.p50_ms

    @property
    def p95_ms(self) -> float | None:
        return self.hour.p95_ms

    @property
    def throughput(self) -> Sparkline:
        """Translations stored per minute."""
        return Sparkline([float(minute.jobs) for minute in self.per_minute])

    @property
    def p50_line(self) -> Sparkline:
        return Sparkline([minute.p50_ms for minute in self.per_minute])

    @property
    def p95_line(self) -> Sparkline:
        return Sparkline([minute.p95_ms for minute in self.per_minute])


def route_activity(now: datetime | None = None) -> tuple[list[RouteActivity], bool]:
    """Every route with its last hour, and whether the row limit cut the hour short (never on
    PostgreSQL, which computes the figures itself; elsewhere the newest ROW_LIMIT jobs are read)."""
    from django.db import connection

    from translation.models import LanguageRoute, TranslationStatus

    now = now or timezone.now()
    since = now - timedelta(minutes=MINUTES)
    activity = {route.pk: RouteActivity(route) for route in LanguageRoute.objects.order_by("target_language", "source_language", "variant")}
    recent = finished_since(since)
    stored = recent.filter(status=TranslationStatus.DONE).values_list("route_id", "created_at", "finished_at")
    if connection.vendor == "postgresql":
        figures, truncated = _figures_in_sql(stored, since), False
    else:
        figures, truncated = _figures_in_python(stored, since)
    for route_id, minute, figure in figures:
        entry = activity.get(route_id)
        if entry is None:
            continue
        if minute is None:
            entry.hour = figure
        else:
            entry.per_minute[minute] = figure
    for route_id, failed in recent.filter(status=TranslationStatus.FAILED).values_list("route_id").annotate(n=Count("id")):
        if route_id in activity:
            activity[route_id].failed = failed
    return list(activity.values()), truncated


def finished_since(since: datetime):
    """Customers' jobs finished since ``since`` (samples sent from the route admin are not their
    traffic)."""
    from translation.models import Translation

    return Translation.objects.filter(finished_at__gte=since, route__isnull=False).exclude(
        message__isnull=True, back_translation_of__isnull=True
    )


Rows = list[tuple[int, int | None, Figures]]  # (route, minute of the hour or None for the whole hour, figures)


def _figures_in_sql(stored, since: datetime) -> Rows:
    """The hour's figures by route and minute, computed by PostgreSQL (one statement, a few rows
    back whatever the traffic): a busy hour's jobs are not read into the web process."""
    from django.db import connection

    sql, params = stored.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT route_id, minute, count(*),
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms),
                   percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms)
            FROM (
                SELECT route_id,
                       LEAST(%s, FLOOR(EXTRACT(EPOCH FROM finished_at - %s) / 60))::int AS minute,
                       EXTRACT(EPOCH FROM finished_at - created_at)::float8 * 1000 AS latency_ms
                FROM ({sql}) AS stored (route_id, created_at, finished_at)
            ) AS jobs
            GROUP BY GROUPING SETS ((route_id, minute), (route_id))
            """,
            [MINUTES - 1, since, *params],
        )
        return [(route_id, minute, Figures(jobs, p50, p95)) for route_id, minute, jobs, p50, p95 in cursor.fetchall()]


def _figures_in_python(stored, since: datetime) -> tuple[Rows, bool]:
    """The same figures from the hour's newest ROW_LIMIT jobs, read row by row (SQLite, the
    embedded run); and whether the limit cut the hour short."""
    rows = list(stored.order_by("-finished_at")[:ROW_LIMIT])
    hour: dict[int, list[float]] = {}
    minutes: dict[tuple[int, int], list[float]] = {}
    for route_id, created_at, finished_at in rows:
        latency = (finished_at - created_at).total_seconds() * 1000
        minute = min(MINUTES - 1, int((finished_at - since).total_seconds() // 60))
        hour.setdefault(route_id, []).append(latency)
        minutes.setdefault((route_id, minute), []).append(latency)
    figures = [(route_id, None, Figures.of(latencies)) for route_id, latencies in hour.items()]
    figures += [(route_id, minute, Figures.of(latencies)) for (route_id, minute), latencies in minutes.items()]
    return figures, len(rows) >= ROW_LIMIT


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
