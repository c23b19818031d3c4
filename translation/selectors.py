"""Reads of the translation app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q
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


def route_figures(route_ids: list[int], *, window: timedelta = timedelta(hours=1),
                  latency_rows: int = 20_000) -> dict[int, RouteFigures]:
    """Per route: jobs requested in ``window``, how many ended done or failed, how many are
    still waiting, and the p50/p95 latency (request to stored result) of the done ones (at most
    the latest ``latency_rows`` of each route)."""
    since = timezone.now() - window
    recent = Translation.objects.filter(route_id__in=route_ids, created_at__gte=since, message__isnull=False)
    counts = recent.values("route_id").annotate(
        jobs=Count("id"),
        done=Count("id", filter=Q(status=TranslationStatus.DONE)),
        failed=Count("id", filter=Q(status=TranslationStatus.FAILED)),
        waiting=Count("id", filter=Q(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])),
    )
    figures = {}
    latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    for row in counts:
        durations = (
            recent.filter(route_id=row["route_id"], status=TranslationStatus.DONE)
            .order_by("-finished_at").annotate(latency=latency).values_list("latency", flat=True)[:latency_rows]
        )
        ordered = sorted(d.total_seconds() * 1000 for d in durations if d is not None)
        figures[row["route_id"]] = RouteFigures(
            jobs=row["jobs"], done=row["done"], failed=row["failed"], queued=row["waiting"],
            p50_ms=_percentile(ordered, 50), p95_ms=_percentile(ordered, 95),
        )
    return figures


def waiting_by_queue() -> dict[str, int]:
    """Queued jobs in the ledger per queue (sent or not): what would be stuck without a consumer."""
    rows = Translation.objects.filter(status=TranslationStatus.QUEUED).values("queue").annotate(n=Count("id"))
    return {row["queue"]: row["n"] for row in rows if row["queue"]}
