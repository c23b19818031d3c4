"""Reads of the translation app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import connection
from django.db.models import Aggregate, Count, DurationField, ExpressionWrapper, F, Q
from django.utils import timezone

from translation.models import GlossaryTerm, Translation, TranslationStatus


def glossary_for(target_language: str) -> dict[str, str]:
    """The glossary a translation into ``target_language`` applies: term -> forced translation
    ("" keeps the term). An entry for the language wins over one for every language.

    Read for every batch (one small query): an admin's change applies to the next batch.
    """
    glossary: dict[str, str] = {}
    entries = GlossaryTerm.objects.filter(target_language__in=["", target_language]).order_by("-target_language")
    for term, translation in entries.values_list("term", "translation"):
        glossary.setdefault(term, translation)  # language entries sort before "" (all languages)
    return glossary


def translations_stored(ids) -> set[int]:
    """Which of ``ids`` are rows of the ledger now (one query).

    On PostgreSQL the ids travel as one array parameter: ``pk__in`` makes Django resolve and
    quote each id, 2,048 of them (a burst's commit) costing several times the query's own CPU,
    on the process that is about to send their messages.
    """
    ids = list(ids)
    if not ids:
        return set()
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        table, pk = quote(Translation._meta.db_table), quote(Translation._meta.pk.column)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {pk} FROM {table} WHERE {pk} = ANY(CAST(%s AS bigint[]))", [ids])
            return {row_id for (row_id,) in cursor.fetchall()}
    return set(Translation.objects.filter(pk__in=ids).values_list("pk", flat=True))


@dataclass(frozen=True)
class RouteFigures:
    """A route's traffic from the ledger over a recent window (route samples left out)."""

    jobs: int = 0
    done: int = 0
    failed: int = 0
    queued: int = 0  # not finished yet
    p50_ms: float | None = None
    p95_ms: float | None = None


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class _Percentile(Aggregate):
    """PostgreSQL's percentile_cont over a duration (an interval comes back)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = DurationField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def route_figures(route_ids: list[int], *, window: timedelta = timedelta(hours=1),
                  latency_rows: int = 5_000) -> dict[int, RouteFigures]:
    """Per route: jobs requested in ``window``, how many ended done or failed, how many are
    still waiting, and the p50/p95 latency (request to stored result) of the done ones. One
    grouped query on PostgreSQL (by the (route, created_at) index); elsewhere (the embedded
    SQLite) the latencies of each route's latest ``latency_rows`` done jobs are sorted here."""
    since = timezone.now() - window
    recent = Translation.objects.filter(route_id__in=route_ids, created_at__gte=since, message__isnull=False)
    latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    done = Q(status=TranslationStatus.DONE)
    aggregates = {
        "jobs": Count("id"),
        "done": Count("id", filter=done),
        "failed": Count("id", filter=Q(status=TranslationStatus.FAILED)),
        "waiting": Count("id", filter=Q(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])),
    }
    on_postgres = connection.vendor == "postgresql"
    if on_postgres:
        aggregates["p50"] = _Percentile(latency, 0.5, filter=done)
        aggregates["p95"] = _Percentile(latency, 0.95, filter=done)
    figures = {}
    for row in recent.order_by().values("route_id").annotate(**aggregates):
        if on_postgres:
            p50, p95 = (row[q].total_seconds() * 1000 if row[q] is not None else None for q in ("p50", "p95"))
        else:
            durations = (
                recent.filter(done, route_id=row["route_id"]).order_by("-created_at")
                .annotate(latency=latency).values_list("latency", flat=True)[:latency_rows]
            )
            ordered = sorted(d.total_seconds() * 1000 for d in durations if d is not None)
            p50, p95 = _percentile(ordered, 50), _percentile(ordered, 95)
        figures[row["route_id"]] = RouteFigures(
            jobs=row["jobs"], done=row["done"], failed=row["failed"], queued=row["waiting"], p50_ms=p50, p95_ms=p95,
        )
    return figures


def waiting_by_queue() -> dict[str, int]:
    """Queued jobs in the ledger per queue (sent or not): what would be stuck without a consumer."""
    rows = Translation.objects.filter(status=TranslationStatus.QUEUED).values("queue").annotate(n=Count("id"))
    return {row["queue"]: row["n"] for row in rows if row["queue"]}
